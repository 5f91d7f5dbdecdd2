"""Shared test fixtures: where the real photos are, quiet TensorFlow logs, the order files
start in, and the worker's imports frozen after collection (keras_alexnet/startup.py)."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite runs three processes (and their children) on two cores. PyTorch's OpenMP
# threads spin while they wait for work, which under that load burnt more CPU than they
# computed: the PyTorch backend's process of tests/test_backends.py took 35.6 s of CPU
# spinning against 15.9 s sleeping (measured beside two busy processes). Waiting threads sleep.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI lays ../shared beside the checkout; the photos are never copied into the repo.
SHARED_DATA = REPO.parent / "shared" / "data"
if SHARED_DATA.is_dir():  # the notebooks' real photos (keras_alexnet.notebook_utils.photos_dir)
    os.environ.setdefault("KERAS_ALEXNET_PHOTOS", str(SHARED_DATA))


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real photos not found at {SHARED_DATA}")
    return SHARED_DATA


def train_tiny_run(run_dir, data_dir, precision="float32", **recipe_overrides):
    """Trains a real run of the ``tiny`` preset through `keras_alexnet.training.train`
    (a couple of steps: a run directory exactly as train.py writes it)."""
    from keras_alexnet import recipes, training

    recipe = recipes.resolve("tiny", dict(dict(epochs=2), **recipe_overrides))
    settings = training.RunSettings(output_dir=str(run_dir), max_steps_per_epoch=2, verbose=0,
                                    precision=precision)
    training.train(recipe, training.DataSpec(str(data_dir)).load(), settings, preset="tiny")
    return Path(run_dir)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small copy of the built-in synthetic dataset: 4 classes, 16 + 4 images each."""
    from keras_alexnet import synthetic

    return synthetic.make_dataset(tmp_path_factory.mktemp("tiny_data"), num_classes=4,
                                  train_per_class=16, val_per_class=4, size=64)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data):
    """One real tiny run (2 epochs of 2 steps), shared by the tests that read runs."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny_run") / "run", tiny_data)


# The files that take longest, longest first (measured with --durations): pytest-xdist hands
# whole files to its processes in collection order, so starting these first lets the
# processes finish together instead of one waiting on a long file started last. The two
# whose time is mostly other processes' (tf.data service workers, one process per Keras
# backend) and waits go first, while the CPU is still shared three ways.
LONGEST_FIRST = ("test_data_service.py", "test_backends.py", "test_notebooks.py", "test_kills.py", "test_convert.py",
                 "test_console.py", "test_robust_runs.py", "test_finetune.py", "test_export.py", "test_evaluate.py",
                 "test_training.py", "test_model.py", "test_distributed.py", "test_visualize.py", "test_pretrained.py",
                 "test_prepare.py", "test_data.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_collection_finish(session):
    # This test process owns itself, as train.py does: what collection imported (TensorFlow,
    # Keras, the package) is moved out of the garbage collector's passes
    # (keras_alexnet/startup.py).
    from keras_alexnet import startup

    startup.own_process()

