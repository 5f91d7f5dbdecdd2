"""What a command's start costs: the garbage collector and TensorFlow's import.

Importing TensorFlow and Keras creates about 750,000 Python objects (modules, functions,
op wrappers) that live as long as the process and are never garbage. CPython's collector
still walks them: its full passes during the import, and again at interpreter exit.
``python bench/bench_startup.py`` (2 cores, AVX512_BF16, TensorFlow 2.21), CPU seconds of a
process that imports TensorFlow and Keras: 4.4 as Python does it, 4.0 with the collector
paused, 2.6 paused and then frozen (`gc.freeze`); of a tiny ``train.py`` run, whose start is
most of it: 7.3 with the collector left alone, 5.3 as shipped.

- `collector_paused`: the package's ``__init__`` imports TensorFlow and Keras with the
  collector paused. It restores the caller's setting, so a program that imports the
  package sees no change. Alone it saves little in a whole run (the collector's later
  passes still walk those objects); with the freeze below it is the ~2 s.
- `own_process`: a command that owns its process (``train.py``, ``evaluate.py``,
  ``python -m keras_alexnet.X``) freezes what exists after its imports. Frozen objects are
  skipped by every later collection, the one at exit included. A library must not do this
  in a caller's process (a notebook, a program that calls ``main()``): an object alive
  then that later became garbage only through a reference cycle would never be freed, so
  the commands call it from their ``__main__`` path only. (The test runner, which owns its
  processes, opts in after collection: tests/conftest.py.)
"""

import contextlib
import gc


@contextlib.contextmanager
def collector_paused():
    """The block runs with the cyclic garbage collector off; its state is restored after
    (also when the block raises)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def own_process():
    """Moves every object alive now (after a command's imports) out of the collector's
    passes (`gc.freeze`). Only for a process that the calling command owns."""
    gc.freeze()
