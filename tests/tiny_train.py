"""What the tests of long runs share: train.py's flags at toy size, and how to run it."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from keras_alexnet import run_files, synthetic

REPO = Path(__file__).resolve().parents[1]
# float32: the cheapest precision to trace and run at this size on every machine (bf16
# runs: tests/test_training.py::test_bf16_run_takes_the_fast_path_chosen_for_this_machine).
TINY_FLAGS = ["--preset", "tiny", "--resize-size", "72", "--crop-size", "67", "--fc-units", "32",
              "--batch-size", "8", "--quiet", "--max-steps-per-epoch", "2", "--precision", "float32"]


def make_tiny_data(tmp_path_factory):
    """3 classes, 8 + 4 images each, at 64 px: the smallest data a run through train.py needs."""
    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.make_dataset(root, num_classes=3, train_per_class=8, val_per_class=4, size=64)


def env(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), **extra)


def run_train(args, script="train.py", **extra_env):
    return subprocess.run([sys.executable, str(REPO / script), *args], env=env(**extra_env),
                          capture_output=True, text=True, timeout=600)


def flags(tiny_data, run_dir, epochs, *more):
    return ["--data-dir", str(tiny_data), "--output-dir", str(run_dir), "--epochs", str(epochs),
            *TINY_FLAGS, *more]


def no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def leftovers(run_dir):
    """Temporary files left in a run directory (the lock file is not one)."""
    return [p for p in Path(run_dir).rglob(".*") if p.name != run_files.LOCK_FILE]


def finite_model(path):
    import keras

    model = keras.models.load_model(path, compile=False)
    return all(np.isfinite(w).all() for w in model.get_weights())
