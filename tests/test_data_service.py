"""Input workers on a tf.data service (`keras_alexnet.data_service`, ``train.py
--data-service``): a dispatcher in this process and two workers started as their own
processes (``python -m keras_alexnet.data_service worker``) on 127.0.0.1, as on input
machines. Every training image has its own class, so the labels of a pass say which images
it delivered. (A worker killed mid-pass stalls the pass in TensorFlow 2.21: see
keras_alexnet/data_service.py; not tested here, since a test of it would hang.)"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import train_cli
from keras_alexnet import data, data_service, datasets, run_files

REPO = Path(__file__).resolve().parents[1]
IMAGES = 40


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("service_data")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(IMAGES):
            d = root / split / f"c{c:02d}"
            d.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(d / "x.png")
    return root


@pytest.fixture(scope="module")
def service():
    """The dispatcher and two worker processes."""
    dispatcher = data_service.start_dispatcher()
    address = dispatcher.target.split("://")[1]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    workers = [subprocess.Popen([sys.executable, "-m", "keras_alexnet.data_service", "worker", "--dispatcher",
                                 address, "--heartbeat-interval-ms", "200"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
               for _ in range(2)]
    for w in workers:  # registered once it says so; then a heartbeat or two
        assert "worker for" in w.stdout.readline()
    time.sleep(1.0)
    yield dispatcher, workers
    for w in workers:
        w.kill()
        w.wait()


def one_pass(ds):
    """The labels of one pass over ``ds``."""
    return [label for _, batch in ds for label in batch.numpy().tolist()]


def test_each_pass_delivers_every_image_once_and_train_py_trains_through_it(folder, service, tmp_path):
    dispatcher, _ = service
    source = datasets.load_source(folder, "train")
    ds = data.training_dataset(source, 4, crop_size=67, resize_size=76, seed=0, pca_stddev=0.0,
                               data_service=dispatcher.target)
    for _ in range(2):  # each pass is a new job over the two workers
        labels = one_pass(ds)
        assert sorted(labels) == list(range(IMAGES))

    code, out, err = train_cli.main(["--data-dir", folder, "--data-service", dispatcher.target, "--preset", "tiny",
                                     "--epochs", 2, "--batch-size", 8, "--precision", "float32",
                                     "--output-dir", tmp_path / "run", "--quiet"])
    assert code == 0, err[-3000:]
    assert "from the tf.data service" in out
    metrics = run_files.read_metrics(tmp_path / "run")
    assert list(metrics["epoch"]) == [1, 2] and np.isfinite(metrics["loss"]).all()



def test_the_input_watchdog_fires_on_a_stalled_input_and_not_during_validation():
    """A training input that stops for longer than the timeout calls on_stall once (train.py:
    a message and exit status 5); a slow validation does not."""
    import keras
    import tensorflow as tf

    from keras_alexnet import callbacks

    def slow(i, pause):
        def wait(x):
            time.sleep(pause)
            return x
        return tf.data.Dataset.range(6).map(lambda x: tf.ensure_shape(
            tf.py_function(lambda y: wait(y) if int(y) == i else y, [x], tf.int64), []))

    def xy(ds):
        return ds.map(lambda x: (tf.fill([1], tf.cast(x, tf.float32)), tf.cast(x % 2, tf.float32))).batch(1)

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    for train_stall, val_stall, fires in ((2.5, 0.0, 1), (0.0, 2.5, 0)):
        stalls = []
        dog = callbacks.InputWatchdog(1.0, "stalled for {seconds} s", on_stall=lambda: stalls.append(1),
                                      poll_s=0.05)
        model.fit(xy(slow(3, train_stall)), validation_data=xy(slow(1, val_stall)), epochs=1, verbose=0,
                  callbacks=[dog])
        assert len(stalls) == fires, (train_stall, val_stall, stalls)
