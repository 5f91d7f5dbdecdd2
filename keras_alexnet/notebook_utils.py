"""What the notebooks in ``notebooks/`` need beyond `keras_alexnet.visualize`: a run to
look at, a folder for its figures, the images to show, and one number for Fig. 3.

Each notebook takes one parameter, the path of a run directory written by ``train.py``:

- `get_run`: ``RUN_DIR`` as given (the notebook's papermill-style "parameters" cell),
  else the environment variable ``KERAS_ALEXNET_RUN``, else the built-in default trained
  briefly (`train_brief`: the ``tiny`` preset on the synthetic dataset, 2 epochs of 10
  steps, ~30 s on 2 cores) into ``<cache>/notebook_run``, reused once finished. The
  cache is ``$KERAS_ALEXNET_CACHE``, else ``~/.cache/keras_alexnet``, as for ``train.py``.
- `figures_dir`: ``OUT_DIR`` as given, else ``$KERAS_ALEXNET_OUT``, else ``<run>/figures``.
- `open_run`: the run's model with the preprocessing it was trained with (crop and
  resize size, the mean of its ``stats.npz`` in its recipe's mean mode) and its class
  names, as a `RunView`; `RunView.files` lists the images of the run's own dataset.
- `describe_run`: a paragraph on the run (preset, classes, epochs, errors, chance).
- `image_files`, `one_image`: the images to show, the run's own data first; `real_photos`:
  the ImageNet photos of ``../shared/data/imagenet-sample/val`` beside the checkout, when
  present (`shared_data_dir`).
- `tower_difference`: tower b's mean minus tower a's of a per-kernel quantity (the
  colour specificity of Fig. 3), with a permutation p-value.

Example::

    from keras_alexnet import notebook_utils, visualize
    run_dir = notebook_utils.get_run(None)           # trains the default briefly
    run = notebook_utils.open_run(run_dir)
    visualize.plot_conv1_filters(run.model, notebook_utils.figures_dir(run_dir) / "conv1_filters.png")
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

import keras_alexnet
from keras_alexnet import visualize

RUN_ENV = "KERAS_ALEXNET_RUN"  # the run directory, when RUN_DIR is None
OUT_ENV = "KERAS_ALEXNET_OUT"  # the figures directory, when OUT_DIR is None
CACHE_ENV = "KERAS_ALEXNET_CACHE"  # as train.py: where the synthetic dataset is drawn
DEFAULT_RUN = "notebook_run"  # <cache>/notebook_run: the briefly trained default
BRIEF_EPOCHS = 2
BRIEF_STEPS_PER_EPOCH = 10  # 2 x 10 steps of 32 images: ~30 s on 2 cores, far from trained


def cache_dir():
    """``$KERAS_ALEXNET_CACHE``, else ``~/.cache/keras_alexnet`` (train.py's rule)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "keras_alexnet")).expanduser()


def _finished(run_dir, epochs):
    """Whether ``run_dir`` holds a run that finished at least ``epochs`` epochs."""
    summary = Path(run_dir) / "summary.json"
    if not summary.is_file():
        return False
    try:
        visualize.find_model(run_dir)
    except FileNotFoundError:
        return False
    return int(json.loads(summary.read_text()).get("epochs", 0)) >= epochs


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
    from keras_alexnet import data, recipes, synthetic, training

    recipe = recipes.resolve("tiny", {"epochs": epochs})
    data_dir = synthetic.make_dataset(cache_dir() / "synthetic")
    train_source = data.load_source(data_dir, "train")
    val_source = data.load_source(data_dir, "val", class_names=train_source.class_names)
    settings = training.RunSettings(
        output_dir=str(output_dir), max_steps_per_epoch=max_steps_per_epoch, verbose=verbose
    )
    description = {"data_dir": str(data_dir), "tfds": None, "train_split": "train",
                   "val_split": "val", "class_index": train_source.class_index, "preset": "tiny"}
    training.train(recipe, train_source, val_source, settings, None, description)
    return output_dir


def get_run(run_dir=None):
    """The run directory a notebook shows.

    ``run_dir`` if given, else ``$KERAS_ALEXNET_RUN``, else the built-in default trained
    briefly into ``<cache>/notebook_run`` (`train_brief`; reused once trained).

    Raises:
        FileNotFoundError: naming the path, when a given run has no model.
    """
    if run_dir is None:
        run_dir = os.environ.get(RUN_ENV) or None
    if run_dir is not None:
        run_dir = Path(run_dir).expanduser()
        visualize.find_model(run_dir)  # a missing directory or model names the path
        return run_dir
    default = cache_dir() / DEFAULT_RUN
    if _finished(default, BRIEF_EPOCHS):
        print(f"No run given (RUN_DIR, ${RUN_ENV}): using the briefly trained default {default}")
        return default
    print(f"No run given (RUN_DIR, ${RUN_ENV}): training the built-in default for {BRIEF_EPOCHS} "
          f"epochs of {BRIEF_STEPS_PER_EPOCH} steps into {default} (about 30 s on 2 cores) ...", flush=True)
    try:
        return train_brief(default)
    except ValueError as e:  # a leftover of another recipe version in our own cache folder
        if "another configuration" not in str(e):
            raise
        print(f"{default} holds a run of another configuration: training it afresh.")
        shutil.rmtree(default)
        return train_brief(default)


def figures_dir(run_dir, out_dir=None):
    """Where a notebook writes its PNGs (created): ``out_dir`` if given, else
    ``$KERAS_ALEXNET_OUT``, else ``<run_dir>/figures``."""
    if out_dir is None:
        out_dir = os.environ.get(OUT_ENV) or Path(run_dir) / "figures"
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def shared_data_dir():
    """``../shared/data`` beside the checkout (the real photos are never copied into it)."""
    return Path(keras_alexnet.__file__).resolve().parents[1].parent / "shared" / "data"


def real_photos():
    """The photos of ``imagenet-sample/val`` in `shared_data_dir` (one per class for
    100 ImageNet classes, sorted by wnid), or [] when they are not there."""
    folder = shared_data_dir() / "imagenet-sample" / "val"
    return visualize.list_images(folder) if folder.is_dir() else []


def spread(files, n):
    """At most ``n`` of ``files``, evenly spaced (so a class-sorted list shows every class)."""
    files = list(files)
    if len(files) <= n:
        return files
    return [files[i] for i in np.unique(np.linspace(0, len(files) - 1, n).round().astype(int))]


@dataclasses.dataclass(eq=False)
class RunView:
    """A run's model with the preprocessing and class names it was trained with.

    Attributes:
        run_dir: the run directory.
        model: the model (`keras_alexnet.visualize.load_run_model`: best, else last).
        config: ``config.json``.
        crop: the model's input side.
        resize_size: the shorter side images are resized to before the centre crop.
        mean: the array subtracted from an RGB image in ``[0, 255]`` (a mean image,
            a per-channel mean, or 0), per the recipe's ``mean`` mode.
        mean_source: where ``mean`` came from, in words.
        class_names: the run's class names as folders name them (wnids, "disc", ...).
        display_names: the names to print (`keras_alexnet.evaluation.class_display_names`).
    """

    run_dir: Path
    model: object
    config: dict
    crop: int
    resize_size: int
    mean: np.ndarray
    mean_source: str
    class_names: list
    display_names: list

    def preprocess(self, images):
        """What the model gets for RGB ``images`` in ``[0, 255]``: the mean subtracted."""
        return visualize.subtract_mean(images, self.mean)

    def load(self, paths):
        """Images as the model's centre crops, RGB ``[0, 255]``, mean not subtracted."""
        return visualize.load_images(paths, self.crop, self.resize_size)

    def files(self, split="val"):
        """Image files of ``split`` of the run's own dataset (sorted by class folder),
        or [] when its data is not a folder here (a TFDS run, another machine)."""
        data = self.config.get("data") or {}
        root = run_data_dir(self.config)
        if root is None:
            return []
        folder = root / data.get(f"{split}_split", split)
        return visualize.list_images(folder) if folder.is_dir() else []

    def label(self, path):
        """Class index of an image in a folder named after one of the run's classes, else -1."""
        name = Path(path).parent.name
        return self.class_names.index(name) if name in self.class_names else -1

    def initial_model(self):
        """A model with the run's architecture, initialised as its recipe's seed gives:
        the weights before training, to compare trained ones with."""
        from keras_alexnet import recipes, training

        recipe = recipes.Recipe.from_dict(self.config["recipe"])
        grouping = (self.config.get("settings") or {}).get("grouping", "towers")
        return training.build_model(recipe, len(self.display_names), grouping)


def run_data_dir(config):
    """The run's data folder from its ``config.json``, or None (a TFDS run). A relative
    ``--data-dir`` is relative to the directory train.py ran in (``working_dir``), not
    to wherever the notebook runs."""
    data = config.get("data") or {}
    if data.get("tfds") or not data.get("data_dir"):
        return None
    root = Path(data["data_dir"])
    if not root.is_absolute() and config.get("working_dir"):
        root = Path(config["working_dir"]) / root
    return root


def open_run(run_dir):
    """Loads a run as a `RunView` (the preprocessing of `keras_alexnet.evaluation`'s
    `load_checkpoint`: crop size, resize size and mean mode from ``config.json``, the
    mean from ``stats.npz``)."""
    from keras_alexnet import evaluation

    run_dir = Path(run_dir)
    model = visualize.load_run_model(run_dir)
    config = visualize.read_config(run_dir)
    crop = int(model.input_shape[1])
    num_classes = int(model.output_shape[-1])
    mode = (config.get("recipe") or {}).get("mean", "image")
    stats_path = run_dir / "stats.npz"
    if mode == "none":
        mean, source = np.zeros(3, np.float32), "none (the recipe subtracts no mean)"
    elif mode == "channel" and stats_path.is_file():
        with np.load(stats_path) as stats:
            mean, source = np.asarray(stats["channel_mean"], np.float32), f"{stats_path}[channel_mean]"
    else:
        mean, source = visualize.run_mean(run_dir, config)
    names = config.get("class_names")
    class_names = [str(n) for n in names] if names and len(names) == num_classes else []
    return RunView(
        run_dir=run_dir,
        model=model,
        config=config,
        crop=crop,
        resize_size=visualize.run_resize_size(run_dir, crop),
        mean=mean,
        mean_source=source,
        class_names=class_names,
        display_names=evaluation.class_display_names(class_names or None, num_classes),
    )


def image_files(run, split="val", n=8):
    """Up to ``n`` image files to show, evenly spread over the sorted list (so over the
    classes): ``split`` of the run's own dataset (`RunView.files`); when that is not on
    this machine, the shared real photos (``val``: ``imagenet-sample/val``, ``train``:
    ``imagenette/train``); else []."""
    files = run.files(split)
    if not files:
        folder = shared_data_dir() / ("imagenet-sample/val" if split == "val" else f"imagenette/{split}")
        files = visualize.list_images(folder) if folder.is_dir() else []
    return spread(files, n)


def one_image(run):
    """One image to show the activations of, as ``(image, description)``: the image is
    the model's RGB centre crop in ``[0, 255]`` (mean not subtracted). The first of the
    real photos (`real_photos`), else the first validation image of the run's data, else
    a disc drawn by `keras_alexnet.synthetic`."""
    files = real_photos()[:1] or run.files("val")[:1]
    if files:
        return run.load(files)[0], str(files[0])
    from keras_alexnet import synthetic

    drawn = synthetic.draw_image(synthetic.CLASSES.index("disc"), np.random.default_rng(0), run.resize_size)
    image = np.asarray(drawn, np.float32)
    top = (run.resize_size - run.crop) // 2
    return image[top : top + run.crop, top : top + run.crop], "a disc drawn by keras_alexnet.synthetic"


def describe_run(run_dir):
    """One paragraph on a run from its ``config.json`` and ``metrics.csv``: preset,
    classes, epochs trained, last and best validation errors, and chance."""
    run_dir = Path(run_dir)
    config = visualize.read_config(run_dir)
    lines = [f"run: {run_dir}"]
    preset = (config.get("data") or {}).get("preset", "?")
    classes = config.get("num_classes")
    lines.append(f"preset {preset}, {classes} classes ({config.get('class_index', '?')} index), "
                 f"data {(config.get('data') or {}).get('data_dir')}")
    if (run_dir / "metrics.csv").is_file():
        m = visualize.read_metrics(run_dir / "metrics.csv")
        if "val_top1_error" in m and len(m["val_top1_error"]):
            best = int(np.nanargmin(m["val_top1_error"]))
            epochs = m["epoch"] if "epoch" in m else np.arange(1, len(m["val_top1_error"]) + 1)
            lines.append(
                f"{len(m['val_top1_error'])} epochs trained; last validation top-1 error "
                f"{m['val_top1_error'][-1]:.1%}, top-5 {m.get('val_top5_error', [np.nan])[-1]:.1%}; "
                f"best top-1 {m['val_top1_error'][best]:.1%} at epoch {int(epochs[best])}"
            )
    if classes:
        lines.append(f"chance: top-1 error {1 - 1 / classes:.1%}, top-5 error {max(0.0, 1 - 5 / classes):.1%}")
    return "\n".join(lines)


def tower_difference(values, permutations=10_000, seed=0):
    """Tower b's mean minus tower a's of a per-kernel quantity, and how often a random
    split of the same kernels into two halves gives as large a difference.

    Args:
        values: ``n`` values, tower a's ``n/2`` first (`visualize.conv1_kernels` order),
            e.g. `visualize.colour_specificity` of the 96 conv1 kernels.
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
