"""Fault injection for the tests of long runs: `inject` patches the training code in this
process (tests call it with ``monkeypatch.setattr``) before train.py's main runs in it.

FAULT:
- ``lr:E:VALUE``: the learning rate becomes VALUE at the first start of epoch E
  (1-based), as if the rate jumped once: a later epoch diverges, deterministically;
- ``enospc-save:NAME``: ``model.save`` of the temporary file of NAME (e.g.
  ``epoch-0002.keras``) writes half the file, then fails with ENOSPC (a full disk).
"""

import errno
import os
from pathlib import Path

import keras

from keras_alexnet import callbacks


def inject(fault, setattr=setattr):
    kind, _, rest = fault.partition(":")
    if kind == "lr":
        epoch, value = rest.split(":")
        jumped = []

        def on_epoch_begin(self, e, logs=None, _orig=callbacks.EpochInfo.on_epoch_begin):
            if e + 1 == int(epoch) and not jumped:  # once (a recovery redoes the epoch)
                jumped.append(e)
                callbacks.set_learning_rate(self.model, float(value))
            _orig(self, e, logs)

        setattr(callbacks.EpochInfo, "on_epoch_begin", on_epoch_begin)
    elif kind == "enospc-save":
        real_save = keras.Model.save

        def save(model, filepath, *args, **kwargs):
            real_save(model, filepath, *args, **kwargs)
            if Path(filepath).name == f".tmp-{rest}":
                with open(filepath, "r+b") as f:
                    f.truncate(os.path.getsize(filepath) // 2)
                raise OSError(errno.ENOSPC, "No space left on device")

        setattr(keras.Model, "save", save)
    else:
        raise ValueError(f"unknown FAULT {kind!r}")
