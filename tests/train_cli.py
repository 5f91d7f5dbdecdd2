"""``python train.py ARGV`` in the test's own process: its exit status, stdout and stderr,
without starting Python and TensorFlow again for every run. Tests whose point is the
process itself (kills, the lock between two processes, the console, the status a shell
sees for each exit code) start train.py as a subprocess instead."""

import contextlib
import gc
import importlib.util
import io
from pathlib import Path

import keras

REPO = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("train_script", REPO / "train.py")
train_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_script)


def main(argv):
    """(exit status, stdout, stderr) of ``train.main(argv)``; an exception escaping it (what
    a user would see as a traceback) fails the calling test."""
    frozen = gc.get_freeze_count()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = train_script.main([str(a) for a in argv])
        except SystemExit as e:  # argparse's errors
            code = e.code
    # keras_alexnet.training.train puts the caller's dtype policy back: a test after this one
    # must not run in the run's precision.
    assert keras.mixed_precision.global_policy().name == "float32", "train() leaked its policy"
    # Only a process of train.py's own freezes its objects (keras_alexnet/startup.py); frozen
    # objects that died meanwhile leave the count, nothing else enters it.
    assert gc.get_freeze_count() <= frozen, "train.py's main froze its caller's objects"
    return code, out.getvalue(), err.getvalue()
