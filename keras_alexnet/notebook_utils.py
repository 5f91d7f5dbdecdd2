"""What the notebooks in ``notebooks/`` need beyond `keras_alexnet.runs` and
`keras_alexnet.figures`: a run to look at, a folder for its figures, the images to
show, and one number for Fig. 3.

Each notebook takes one parameter, the path of a run directory written by ``train.py``
(or a model directory of ``keras_alexnet.convert``):

- `get_run`: ``RUN_DIR`` as given (the notebook's papermill-style "parameters" cell),
  else the environment variable ``KERAS_ALEXNET_RUN``, else the built-in default trained
  briefly (`train_brief`: the ``tiny`` preset on the synthetic dataset, 2 epochs of 10
  steps, ~30 s on 2 cores) into ``<cache>/notebook_run``, reused once finished. The
  cache is `keras_alexnet.synthetic.cache_dir`, as for ``train.py``.
- `figures_dir`: ``OUT_DIR`` as given, else ``$KERAS_ALEXNET_OUT``, else ``<run>/figures``.
- the run itself is `keras_alexnet.runs.open_run`: its model, `Preprocessing` (``load``
  for what is drawn, ``network_input`` for what the model gets: the same tensor as in
  evaluation), class names and ``describe()``.
- `image_files`, `one_image`: the images to show, the run's own data first; `real_photos`:
  ImageNet photos from ``$KERAS_ALEXNET_PHOTOS`` (`photos_dir`), when it is set.
- `tower_difference`: tower b's mean minus tower a's of a per-kernel quantity (the
  colour specificity of Fig. 3), with a permutation p-value.

Example::

    from keras_alexnet import figures, notebook_utils, runs
    run_dir = notebook_utils.get_run(None)           # trains the default briefly
    run = runs.open_run(run_dir)
    figures.plot_conv1_filters(run.model, notebook_utils.figures_dir(run_dir) / "conv1_filters.png")
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from keras_alexnet import run_files, runs, sources, synthetic
from keras_alexnet.analysis import spread

RUN_ENV = "KERAS_ALEXNET_RUN"  # the run directory, when RUN_DIR is None
OUT_ENV = "KERAS_ALEXNET_OUT"  # the figures directory, when OUT_DIR is None
DEFAULT_RUN = "notebook_run"  # <cache>/notebook_run: the briefly trained default
BRIEF_EPOCHS = 2
BRIEF_STEPS_PER_EPOCH = 10  # 2 x 10 steps of the tiny preset's batch: far from trained


def _finished(run_dir, epochs):
    """Whether ``run_dir`` holds a run that finished at least ``epochs`` epochs."""
    try:
        summary = run_files.read_summary(run_dir)
        runs.find_model(run_dir)
    except run_files.RunError:
        return False
    return summary is not None and int(summary.get("epochs", 0)) >= epochs


def train_brief(output_dir, epochs=BRIEF_EPOCHS, max_steps_per_epoch=BRIEF_STEPS_PER_EPOCH, verbose=0):
    """Trains the built-in default briefly into ``output_dir`` and returns its path.

    The same calls as ``python train.py --output-dir DIR --epochs E
    --max-steps-per-epoch S --quiet`` (the ``tiny`` preset on the synthetic dataset of
    `keras_alexnet.synthetic`, drawn once into the cache): a run directory with
    ``config.json``, ``stats.npz``, ``metrics.csv``, ``best.keras``, ``last.keras`` and
    ``summary.json``. A run that already finished ``epochs`` epochs is reused as it is;
    an unfinished one is resumed (`keras_alexnet.training.train`).

    Returns:
        `pathlib.Path` of ``output_dir``.
    """
    output_dir = Path(output_dir)
    if _finished(output_dir, epochs):
        return output_dir
    from keras_alexnet import figures, recipes, training

    recipe = recipes.resolve("tiny", {"epochs": epochs})
    run_data = training.DataSpec(str(synthetic.default_dataset())).load()
    settings = training.RunSettings(
        output_dir=str(output_dir), max_steps_per_epoch=max_steps_per_epoch, verbose=verbose
    )
    training.train(recipe, run_data, settings, preset="tiny", after_run=figures.record_training_curves)
    return output_dir


def get_run(run_dir=None):
    """The run directory a notebook shows.

    ``run_dir`` if given, else ``$KERAS_ALEXNET_RUN`` (a run or model directory, or named
    weights such as ``bvlc_alexnet``: `keras_alexnet.runs.locate`), else the built-in default trained
    briefly into ``<cache>/notebook_run`` (`train_brief`; reused once trained).

    Raises:
        FileNotFoundError: naming the path, when a given run has no model.
    """
    if run_dir is None:
        run_dir = os.environ.get(RUN_ENV) or None
    if run_dir is not None:
        run_dir = runs.locate(run_dir)  # a path, or named weights ("bvlc_alexnet")
        runs.find_run(run_dir)  # a missing directory or model names the path
        return run_dir
    default = synthetic.cache_dir() / DEFAULT_RUN
    if _finished(default, BRIEF_EPOCHS):
        print(f"No run given (RUN_DIR, ${RUN_ENV}): using the briefly trained default {default}")
        return default
    print(f"No run given (RUN_DIR, ${RUN_ENV}): training the built-in default for {BRIEF_EPOCHS} "
          f"epochs of {BRIEF_STEPS_PER_EPOCH} steps into {default} (about 30 s on 2 cores) ...", flush=True)
    try:
        return train_brief(default)
    except run_files.ConfigMismatchError:  # a leftover of another recipe version in our own cache folder
        print(f"{default} holds a run of another configuration: training it afresh.")
        shutil.rmtree(default)
        return train_brief(default)


def figures_dir(run_dir, out_dir=None):
    """Where a notebook writes its PNGs (created): ``out_dir`` if given, else
    ``$KERAS_ALEXNET_OUT``, else ``<run_dir>/figures``."""
    if out_dir is None:
        out_dir = os.environ.get(OUT_ENV) or Path(run_dir) / run_files.FIGURES_DIR
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


PHOTOS_ENV = "KERAS_ALEXNET_PHOTOS"


def photos_dir():
    """``$KERAS_ALEXNET_PHOTOS``, a folder of real photos for the notebooks, or None.

    Laid out as ``imagenet-sample/val/<wnid>/*`` (photos to show, predict and find the
    neighbours of) and ``imagenette/<split>/<wnid>/*`` (a training set to search for
    neighbours), class folders named by ImageNet wnid; either part may be missing."""
    folder = os.environ.get(PHOTOS_ENV)
    return Path(folder).expanduser() if folder else None


def real_photos():
    """The photos of ``imagenet-sample/val`` in `photos_dir` (sorted by class folder), or
    [] when there are none."""
    root = photos_dir()
    folder = root / "imagenet-sample" / "val" if root else None
    return sources.list_images(folder) if folder and folder.is_dir() else []


def image_files(run, split="val", n=8):
    """Up to ``n`` image files to show, evenly spread over the sorted list (so over the
    classes): ``split`` of the run's own dataset (`keras_alexnet.runs.Run.files`); when that is not on
    this machine, the real photos of `photos_dir` (``val``: ``imagenet-sample/val``,
    ``train``: ``imagenette/train``); else []."""
    files = run.files(split)
    root = photos_dir()
    if not files and root:
        folder = root / ("imagenet-sample/val" if split == "val" else f"imagenette/{split}")
        files = sources.list_images(folder) if folder.is_dir() else []
    return spread(files, n)


def one_image(run):
    """One image to show the activations of, as ``(image, description)``: the image is
    the model's RGB centre crop in ``[0, 255]`` (mean not subtracted). The first of the
    real photos (`real_photos`), else the first validation image of the run's data, else
    a disc drawn by `keras_alexnet.synthetic`."""
    pre = run.preprocessing
    files = real_photos()[:1] or run.files("val")[:1]
    if files:
        return pre.load(files)[0], str(files[0])
    drawn = synthetic.draw_image(synthetic.CLASSES.index("disc"), np.random.default_rng(0), pre.resize_size)
    image = np.asarray(drawn, np.float32)
    top = (pre.resize_size - pre.crop_size) // 2
    return image[top : top + pre.crop_size, top : top + pre.crop_size], "a disc drawn by keras_alexnet.synthetic"


def tower_difference(values, permutations=10_000, seed=0):
    """Tower b's mean minus tower a's of a per-kernel quantity, and how often a random
    split of the same kernels into two halves gives as large a difference.

    Args:
        values: ``n`` values, tower a's ``n/2`` first (`keras_alexnet.activations.conv1_kernels` order),
            e.g. `keras_alexnet.analysis.colour_specificity` of the 96 conv1 kernels.
        permutations: random relabellings for the p-value.
        seed: their seed.

    Returns:
        dict with ``mean_a``, ``mean_b``, ``difference`` (b - a) and ``p_value``: the
        fraction of relabellings with ``|difference|`` at least as large (two-sided,
        counting the observed split, so never 0).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) < 2 or len(values) % 2:
        raise ValueError(f"need an even number of values (two towers), got {len(values)}.")
    half = len(values) // 2
    observed = values[half:].mean() - values[:half].mean()
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(values) for _ in range(permutations)])
    diffs = shuffled[:, half:].mean(axis=1) - shuffled[:, :half].mean(axis=1)
    extreme = np.sum(np.abs(diffs) >= abs(observed) - 1e-12)
    return {
        "mean_a": float(values[:half].mean()),
        "mean_b": float(values[half:].mean()),
        "difference": float(observed),
        "p_value": float((extreme + 1) / (permutations + 1)),
    }
