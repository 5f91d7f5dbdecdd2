"""Runs train.py and kills itself with SIGKILL at a chosen point (fault injection).

KILL_AT, in the environment:
- ``replace:NAME:N``: at the N-th atomic rename onto a file called NAME (e.g.
  ``checkpoint.json:2``, the pointer of epoch 2, after the model and state were written);
- ``torn:NAME``: while writing the model file NAME: half of the temporary file written;
- ``batch:E:B``: after batch B of epoch E (1-based), i.e. mid-epoch.
Usage: python kill_worker.py TRAIN_FLAGS...
"""

import os
import runpy
import signal
import sys
from pathlib import Path

from keras_alexnet import callbacks  # first: the package imports TensorFlow quietly and cheaply

import keras


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


kind, _, rest = os.environ["KILL_AT"].partition(":")
if kind == "replace":
    name, count = rest.rsplit(":", 1)
    seen = [0]
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == name:
            seen[0] += 1
            if seen[0] == int(count):
                die()
        return real_replace(src, dst)

    os.replace = replace
elif kind == "torn":
    real_save = keras.Model.save

    def save(model, filepath, *args, **kwargs):
        real_save(model, filepath, *args, **kwargs)
        if Path(filepath).name == f".tmp-{rest}":
            size = os.path.getsize(filepath)
            with open(filepath, "r+b") as f:
                f.truncate(size // 2)
            die()

    keras.Model.save = save
elif kind == "batch":
    epoch, batch = (int(v) for v in rest.split(":"))

    def on_train_batch_end(self, b, logs=None):
        if self._epoch == epoch and b + 1 == batch:
            die()

    def on_epoch_begin(self, e, logs=None, _orig=callbacks.EpochInfo.on_epoch_begin):
        self._epoch = e + 1
        _orig(self, e, logs)

    callbacks.EpochInfo.on_train_batch_end = on_train_batch_end
    callbacks.EpochInfo.on_epoch_begin = on_epoch_begin

sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path(str(Path(__file__).resolve().parents[1] / "train.py"), run_name="__main__")
