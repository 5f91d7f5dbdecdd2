"""Runs train.py with an injected fault (fault injection for tests/test_robust_runs.py).

FAULT, in the environment:
- ``lr:E:VALUE``: the learning rate becomes VALUE at the first start of epoch E
  (1-based), as if the rate jumped once: a later epoch diverges, deterministically;
- ``enospc-save:NAME``: ``model.save`` of the temporary file of NAME (e.g.
  ``epoch-0002.keras``) writes half the file, then fails with ENOSPC (a full disk);
- ``enospc-replace:NAME:N``: the N-th atomic rename onto a file called NAME fails with
  ENOSPC (e.g. ``checkpoint.json:2``: the pointer of epoch 2);
- ``wait:PATH``: the first epoch waits until PATH exists (at most 10 minutes), so the run
  holds its lock for as long as a test needs.
Usage: python fault_worker.py TRAIN_FLAGS...
"""

import errno
import os
import runpy
import sys
from pathlib import Path

import keras

from keras_alexnet import callbacks

kind, _, rest = os.environ["FAULT"].partition(":")
if kind == "lr":
    epoch, value = rest.split(":")

    jumped = []

    def on_epoch_begin(self, e, logs=None, _orig=callbacks.EpochInfo.on_epoch_begin):
        if e + 1 == int(epoch) and not jumped:  # once (a recovery redoes the epoch)
            jumped.append(e)
            callbacks.set_learning_rate(self.model, float(value))
        _orig(self, e, logs)

    callbacks.EpochInfo.on_epoch_begin = on_epoch_begin
elif kind == "enospc-save":
    real_save = keras.Model.save

    def save(model, filepath, *args, **kwargs):
        real_save(model, filepath, *args, **kwargs)
        if Path(filepath).name == f".tmp-{rest}":
            with open(filepath, "r+b") as f:
                f.truncate(os.path.getsize(filepath) // 2)
            raise OSError(errno.ENOSPC, "No space left on device")

    keras.Model.save = save
elif kind == "enospc-replace":
    name, count = rest.rsplit(":", 1)
    seen = [0]
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == name:
            seen[0] += 1
            if seen[0] == int(count):
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    os.replace = replace
elif kind == "wait":
    import time

    def on_epoch_begin(self, e, logs=None, _orig=callbacks.EpochInfo.on_epoch_begin):
        deadline = time.time() + 600
        while e == 0 and not Path(rest).exists() and time.time() < deadline:
            time.sleep(0.1)
        _orig(self, e, logs)

    callbacks.EpochInfo.on_epoch_begin = on_epoch_begin
else:
    raise SystemExit(f"unknown FAULT {kind!r}")

sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path(str(Path(__file__).resolve().parents[1] / "train.py"), run_name="__main__")
