"""Named published weights (``bvlc_alexnet``, ``caffenet``, ``torchvision``, ``imagenet``),
URLs and paths, resolved to a model directory that `keras_alexnet.runs.open_run` opens.

(Work in progress: today only paths.)
"""

from __future__ import annotations

from pathlib import Path


def resolve(spec, *, file_hash=None):
    """The local path that ``spec`` names: a run or model directory, a ``.keras`` file or a
    published weights file. A name or URL will be downloaded, verified and converted once."""
    return Path(spec).expanduser()


def open_model(spec, **open_run_kwargs):
    """`keras_alexnet.runs.open_run` on what ``spec`` names (a name, URL or path)."""
    from keras_alexnet import runs

    return runs.open_run(resolve(spec), **open_run_kwargs)
