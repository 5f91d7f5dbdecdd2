"""A run directory, and a model directory, opened for use.

- a **run** is a directory written by ``python train.py`` (or a *model directory*
  written by ``python -m keras_alexnet.convert``); `open_run` opens either, or a
  ``.keras`` file inside one, as a `Run`: the model file, the recipe, the class names
  and the `keras_alexnet.preprocessing.Preprocessing` the model must be fed with,
  **resolved once**;
- a loaded **model** is ``Run.model``: loaded safely, on first use, and in float32
  whatever precision it was trained in (`serving_model`), for evaluation, the
  figures, predictions and export alike;
- a name of published weights (``bvlc_alexnet``, ``imagenet``, a URL: `keras_alexnet.pretrained`)
  opens as its converted model directory (`locate`).

The files themselves (names, atomic writes) are `keras_alexnet.run_files`'; the
training state is `keras_alexnet.training_state`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import zipfile
from pathlib import Path

import numpy as np

from keras_alexnet import imagenet
from keras_alexnet import preprocessing as pre_lib
from keras_alexnet import pretrained
from keras_alexnet import recipes
from keras_alexnet import sources
from keras_alexnet.preprocessing import Preprocessing
from keras_alexnet.run_files import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    FIGURES_DIR,
    MEAN_IMAGE_FILE,
    METRICS_FILE,
    MODEL_FILES,
    STATS_FILE,
    RunError,
    RunNotFoundError,
    UnsafeModelError,
    load_stats,
    read_config,
    read_metrics,
    read_summary,
)


# ---------------------------------------------------------------------------------------
# Loading models


def _float32_config(config):
    """``config`` (a serialized model) with every layer's dtype policy float32."""
    if isinstance(config, list):
        return [_float32_config(c) for c in config]
    if not isinstance(config, dict):
        return config
    out = {k: _float32_config(v) for k, v in config.items()}
    dtype = out.get("dtype")
    if isinstance(dtype, dict) and dtype.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        out["dtype"] = dict(dtype, class_name="DTypePolicy", config={"name": "float32"})
    elif isinstance(dtype, str) and dtype in ("mixed_bfloat16", "mixed_float16", "bfloat16", "float16"):
        out["dtype"] = "float32"
    return out


def serving_model(model, *, unsafe=False):
    """``model`` computing in float32, whatever precision it was trained in.

    A model trained under a mixed policy (``--precision mixed_bfloat16``, which
    ``--precision auto`` picks on CPUs with AVX512_BF16) saves that policy with every
    layer, and `keras.models.load_model` restores it whatever the global policy: its
    convolutions then run in bfloat16, which TFLite's builtin ops cannot take and which
    rounds the probabilities to 3 significant digits. The serving model is the same
    network rebuilt from its config with every layer's policy float32, and the
    (float32) weights copied. A float32 model is returned as it is.
    """
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in model._flatten_layers()):
        return model
    config = _float32_config(keras.saving.serialize_keras_object(model))
    clone = keras.saving.deserialize_keras_object(config, safe_mode=not unsafe)
    clone.set_weights(model.get_weights())
    return clone


def load_model(path, *, unsafe=False):
    """Loads a ``.keras`` model for inference (uncompiled, `serving_model`: float32),
    safely by default.

    Args:
        path: the ``.keras`` file.
        unsafe: allow a model that runs arbitrary code on loading (a ``Lambda`` layer
            with Python bytecode): ``safe_mode=False``. Only for files you trust.

    Raises:
        UnsafeModelError: the file needs ``unsafe=True``.
        RunError: the file is not a readable Keras model.
    """
    import keras

    import keras_alexnet  # noqa: F401  (registers the custom layers)

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise RunError(
            f"Cannot load the model {path}: not a .keras archive (a zip file); is it "
            "truncated, or another format?"
        )
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except ValueError as e:
        message = str(e)
        if not unsafe and ("safe_mode" in message or "unsafe_deserialization" in message):
            raise UnsafeModelError(
                f"Refusing to load {path}: it holds code that would run when the model is "
                f"loaded ({message.split('.')[0]}). Load it only if you trust where it came "
                "from, with --unsafe-load (keras safe_mode=False)."
            ) from e
        raise RunError(f"Cannot load the model {path}: {message}") from e
    except (OSError, zipfile.BadZipFile, KeyError, TypeError) as e:
        raise RunError(f"Cannot load the model {path}: {type(e).__name__}: {e}") from e
    return serving_model(model, unsafe=unsafe)


def find_model(directory):
    """The model of a directory: ``best.keras``, else ``last.keras``, else ``model.keras``.

    Raises:
        RunNotFoundError: naming the directory and the files looked for.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise RunNotFoundError(f"Run directory not found: {directory}")
    for name in MODEL_FILES:
        if (directory / name).is_file():
            return directory / name
    raise RunNotFoundError(
        f"No model in {directory}: none of {', '.join(str(directory / n) for n in MODEL_FILES)} exists."
    )


def find_run(path):
    """The model file and the run directory (or None) that a path names.

    - A directory holding ``config.json`` (a run, a model directory): its model
      (`find_model`).
    - A ``.keras`` file: itself; its run directory is its folder when that holds
      ``config.json`` (``RUN/best.keras``), or the folder above for
      ``RUN/checkpoints/epoch-NNNN.keras``.
    - A directory without ``config.json`` is searched for a model the same way but
      has no run (its preprocessing is unknown).

    Returns:
        ``(model_path, run_dir or None)``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise RunNotFoundError(f"Checkpoint not found: {path} does not exist.")
    if path.is_dir():
        return find_model(path), path if (path / CONFIG_FILE).is_file() else None
    if path.suffix != ".keras":
        raise RunError(
            f"{path} is not a .keras model file; pass a run directory of train.py (or a "
            f"model directory of keras_alexnet.convert) or its {' / '.join(MODEL_FILES)}."
        )
    candidates = [path.parent]
    if path.parent.name == CHECKPOINTS_DIR:
        candidates.append(path.parent.parent)
    return path, next((d for d in candidates if (d / CONFIG_FILE).is_file()), None)


def locate(spec, *, file_hash=None):
    """The path ``spec`` names: itself, or for named published weights (``"imagenet"``,
    ``"bvlc_alexnet"``, ``"caffenet"``, ``"torchvision"``, an http(s) URL:
    `keras_alexnet.pretrained`) their converted model directory, downloaded and converted
    on first use (`keras_alexnet.model.pretrained_dir`)."""
    entry = pretrained.named(spec, file_hash)
    if entry is None:
        return Path(spec).expanduser()
    from keras_alexnet.model import pretrained_dir

    return pretrained_dir(entry)


# ---------------------------------------------------------------------------------------
# Runs


@dataclasses.dataclass(eq=False)
class Run:
    """A run (or model) directory opened by `open_run`, its preprocessing resolved once.

    Attributes:
        path: the run or model directory, or None for a bare ``.keras`` file.
        model_path: the ``.keras`` file (``best.keras``, ``last.keras`` or ``model.keras``).
        config: ``config.json`` ({} for a bare model).
        kind: ``"trained"`` (train.py), ``"converted"`` (keras_alexnet.convert) or
            ``"model"`` (a bare ``.keras``).
        preprocessing: the `Preprocessing` to feed the model with.
        class_names: the class names in output order (wnids, folder names), or None.
        class_index: ``"imagenet"`` / ``"compact"``, or ``"auto"`` when unknown.
        num_classes: the number of outputs.
        overrides: run settings replaced by explicit arguments of `open_run`, in words.
        unsafe: whether `model` may load code (``safe_mode=False``).
    """

    path: Path | None
    model_path: Path
    config: dict
    kind: str
    preprocessing: Preprocessing
    class_names: tuple | None
    class_index: str
    num_classes: int | None
    overrides: tuple = ()
    unsafe: bool = False

    @functools.cached_property
    def model(self):
        """The serving model: uncompiled, in float32 (`serving_model`), loaded safely on
        first use and checked against the run's crop size and class count."""
        model = load_model(self.model_path, unsafe=self.unsafe)
        _check_model(model, self)
        return model

    @property
    def recipe(self):
        """The run's `keras_alexnet.recipes.Recipe`, or None (not trained by train.py)."""
        recipe = self.config.get("recipe")
        return recipes.Recipe.from_dict(recipe) if recipe else None

    @property
    def settings(self):
        return self.config.get("settings") or {}

    def initial_model(self):
        """A model with the run's architecture, initialised as its recipe's seed gives:
        the weights before training, to compare trained ones with."""
        from keras_alexnet.model import AlexNet

        recipe = self.recipe
        if recipe is None:
            raise RunError(f"{self.path or self.model_path} has no recipe (not trained by train.py).")
        return AlexNet(classes=self.num_classes, grouping=self.settings.get("grouping", "towers"),
                       **recipe.model_kwargs())

    def display_names(self):
        """`keras_alexnet.imagenet.class_display_names` of the model's outputs."""
        return imagenet.class_display_names(self.class_names, self.num_classes)

    def label(self, path):
        """Class index of an image in a folder named after one of the run's classes, else -1."""
        name = Path(path).parent.name
        return self.class_names.index(name) if self.class_names and name in self.class_names else -1

    def metrics(self):
        """`read_metrics` of the run's ``metrics.csv``, or None when it has none."""
        if self.path is None or not (self.path / METRICS_FILE).is_file():
            return None
        return read_metrics(self.path / METRICS_FILE)

    def summary(self):
        return read_summary(self.path) if self.path is not None else None

    def data_dir(self):
        """The run's data folder, or None (a TFDS run, a converted model). A relative
        ``--data-dir`` is relative to the directory train.py ran in (``working_dir``)."""
        data = self.config.get("data") or {}
        if data.get("tfds") or not data.get("data_dir"):
            return None
        root = Path(data["data_dir"])
        if not root.is_absolute() and self.config.get("working_dir"):
            root = Path(self.config["working_dir"]) / root
        return root

    def files(self, split="val"):
        """Image files of ``split`` of the run's own dataset (sorted by class folder),
        or [] when its data is not a folder here."""
        root = self.data_dir()
        if root is None:
            return []
        folder = root / (self.config.get("data") or {}).get(f"{split}_split", split)
        return sources.list_images(folder) if folder.is_dir() else []

    def figures_dir(self):
        return (self.path or self.model_path.parent) / FIGURES_DIR

    def describe(self):
        """One paragraph on the run: what it is, classes, epochs, errors, chance."""
        lines = [f"run: {self.path or self.model_path}"]
        if self.kind == "converted":
            src = self.config.get("source") or {}
            lines.append(f"converted from {src.get('format')} ({src.get('variant')}): {src.get('weights')}")
        elif self.kind == "trained":
            data = self.config.get("data") or {}
            lines.append(f"preset {data.get('preset', '?')}, {self.num_classes} classes "
                         f"({self.class_index} index), data {data.get('data_dir')}")
        m = self.metrics()
        if m is not None and "val_top1_error" in m and len(m["val_top1_error"]):
            err = m["val_top1_error"]
            best = int(np.nanargmin(err))
            epochs = m["epoch"] if "epoch" in m else np.arange(1, len(err) + 1)
            top5 = m.get("val_top5_error", np.full(len(err), np.nan))[-1]
            lines.append(f"{len(err)} epochs trained; last validation top-1 error {err[-1]:.1%}, "
                         f"top-5 {top5:.1%}; best top-1 {err[best]:.1%} at epoch {int(epochs[best])}")
        if self.num_classes:
            lines.append(f"chance: top-1 error {1 - 1 / self.num_classes:.1%}, "
                         f"top-5 error {max(0.0, 1 - 5 / self.num_classes):.1%}")
        return "\n".join(lines)


def _check_model(model, run):
    shape = tuple(model.input_shape)
    where = f"its run {run.path / CONFIG_FILE}" if run.path else "the arguments"
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise RunError(f"{run.model_path}: expected a model of square images (None, c, c, 3), "
                       f"got input shape {shape}.")
    if int(shape[1]) != run.preprocessing.crop_size:
        raise RunError(f"{run.model_path} takes {shape[1]}x{shape[2]} inputs but {where} says "
                       f"crop_size {run.preprocessing.crop_size}.")
    classes = int(model.output_shape[-1])
    if run.num_classes is not None and classes != run.num_classes:
        raise RunError(f"{run.model_path} has {classes} outputs but {where} says "
                       f"num_classes {run.num_classes}.")


def _preprocessing(**fields):
    """`Preprocessing` with its errors as `RunError` (they name where the values came from)."""
    try:
        return Preprocessing(**fields)
    except ValueError as e:
        raise RunError(str(e)) from e


def _converted_preprocessing(run_dir, config, mean, resize_size, overrides):
    spec = config.get("preprocessing") or {}
    where = run_dir / CONFIG_FILE
    try:
        crop = int(spec["crop_size"])
        mode = spec.get("mean", pre_lib.CONVERTED_MEAN)
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{where}: its preprocessing block lacks crop_size ({e}).") from e
    if mean is not None and mean != mode:
        overrides.append(f"mean {mean!r} instead of the model's {mode!r}")
        if mean == "image" and not (run_dir / MEAN_IMAGE_FILE).is_file():
            raise RunError(f"--mean image: {run_dir / MEAN_IMAGE_FILE} does not exist.")
        mode = mean
    run_resize = int(spec.get("resize_size") or pre_lib.default_resize_size(crop))
    if resize_size is not None and resize_size != run_resize:
        overrides.append(f"resize size {resize_size} instead of the model's {run_resize}")
    array = None
    if mode == "image":
        path = run_dir / MEAN_IMAGE_FILE
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RunError(f"Cannot read the mean image {path}: {e}") from e
    elif mode == "channel":
        if spec.get("mean_rgb") is None:
            raise RunError(f"{where}: mean 'channel' without mean_rgb.")
        array = np.asarray(spec["mean_rgb"], np.float32)
    return _preprocessing(
        crop_size=crop, resize_size=resize_size or run_resize, mean_mode=mode, mean=array,
        std=spec.get("std_rgb"), channel_order=spec.get("channel_order", "RGB"),
        source=f"{where} ({spec.get('provenance', 'converted model')})")


def _trained_preprocessing(run_dir, config, stats, mean, resize_size, overrides):
    if config.get("preprocessing"):
        # A fine-tuned run (train.py --weights) was fed its source's input, recorded in
        # its config (and mean_image.npy) as a converted model's is.
        if stats is not None:
            raise RunError(f"--stats does not apply to {run_dir}: it was fine-tuned with its "
                           f"source's preprocessing ({run_dir / CONFIG_FILE}).")
        return _converted_preprocessing(run_dir, config, mean, resize_size, overrides)
    recipe = config.get("recipe") or {}
    where = run_dir / CONFIG_FILE
    crop = int(recipe.get("crop_size") or pre_lib.CROP_SIZE)
    run_mean = recipe.get("mean", pre_lib.TRAINED_MEAN)
    run_resize = int(recipe.get("resize_size") or pre_lib.default_resize_size(crop))
    if mean is not None and mean != run_mean:
        overrides.append(f"mean {mean!r} instead of the run's {run_mean!r}")
    if resize_size is not None and resize_size != run_resize:
        overrides.append(f"resize size {resize_size} instead of the run's {run_resize}")
    mode = mean or run_mean
    if stats is not None:
        overrides.append(f"statistics {stats} instead of the run's {run_dir / STATS_FILE}")
        stats_path = Path(stats)
    elif mode != "none":
        stats_path = run_dir / STATS_FILE
        if not stats_path.is_file():
            raise RunNotFoundError(
                f"The run {run_dir} subtracted the {run_mean} mean but its statistics "
                f"{stats_path} are missing; pass --stats FILE with the statistics it was "
                "trained with.")
    else:
        stats_path = None
    return _stats_preprocessing(crop, resize_size or run_resize, mode, stats_path, str(where))


def _stats_preprocessing(crop, resize, mode, stats_path, source):
    if stats_path is not None and mode == "none":
        raise RunError(f"The statistics {stats_path} would not be used: the mean is 'none'. "
                       "Pass --mean image or channel with them, or leave --stats out.")
    array = None
    if mode != "none":
        stats = load_stats(stats_path)
        array = stats.mean_image if mode == "image" else stats.channel_mean
    return _preprocessing(crop_size=crop, resize_size=resize, mean_mode=mode, mean=array,
                         source=source, stats_path=stats_path if mode != "none" else None)


def open_run(path, *, stats=None, mean=None, resize_size=None, class_index="auto", unsafe=False):
    """Opens a run directory, a model directory, or a ``.keras`` file (inside one or bare).

    With a run: crop size, resize size and mean mode come from its ``config.json``
    (the recipe's, or a converted model's ``preprocessing``), the mean from its
    ``stats.npz`` (or ``mean_image.npy``), the class order from ``class_names`` /
    ``class_index``. ``stats``, ``mean`` and ``resize_size`` given explicitly replace
    the run's values (listed in ``Run.overrides``). Without a run, the preprocessing
    must be given: ``stats`` (mean ``TRAINED_MEAN`` by default) or ``mean="none"``; the
    resize size defaults to ``crop * 256 / 227``.

    Args:
        path: a run or model directory, a ``.keras`` file, or named weights (`locate`).
        stats: path of a statistics ``.npz`` (``python -m keras_alexnet.stats``).
        mean: one of `keras_alexnet.preprocessing.MEAN_MODES`.
        resize_size: side of the central square.
        class_index: for a bare model: ``"auto"``, ``"imagenet"`` or ``"compact"``.
        unsafe: see `load_model`.

    Returns:
        A `Run`; its ``model`` loads on first use.

    Raises:
        RunNotFoundError, UnsafeModelError, RunError: with the path.
    """
    if mean is not None:
        try:
            pre_lib.check_mean_mode(mean)
        except ValueError as e:
            raise RunError(str(e)) from e
    model_path, run_dir = find_run(locate(path))
    overrides = []
    if run_dir is None:
        if stats is None and mean != "none":  # checked before the slow load
            raise RunError(
                f"{model_path} is not inside a run directory ({model_path.parent / CONFIG_FILE} "
                "does not exist), so the preprocessing it was trained with is unknown. Pass it "
                "explicitly: --stats FILE (the training set's statistics, from `python -m "
                "keras_alexnet.stats`) or --mean none.")
        model = load_model(model_path, unsafe=unsafe)
        crop = int(model.input_shape[1]) if model.input_shape[1] else pre_lib.CROP_SIZE
        mode = mean or pre_lib.TRAINED_MEAN
        preprocessing = _stats_preprocessing(
            crop, resize_size or pre_lib.default_resize_size(crop), mode,
            Path(stats) if stats is not None else None, "arguments")
        run = Run(path=None, model_path=model_path, config={}, kind="model",
                  preprocessing=preprocessing, class_names=None, class_index=class_index,
                  num_classes=int(model.output_shape[-1]), unsafe=unsafe)
        _check_model(model, run)
        run.__dict__["model"] = model  # the cached property, already loaded
        return run

    config = read_config(run_dir)
    kind = config.get("kind", "trained")
    if kind == "converted":
        if stats is not None:
            raise RunError(f"--stats does not apply to the converted model {run_dir}: it "
                           f"carries its own preprocessing ({run_dir / CONFIG_FILE}).")
        preprocessing = _converted_preprocessing(run_dir, config, mean, resize_size, overrides)
    else:
        preprocessing = _trained_preprocessing(run_dir, config, stats, mean, resize_size, overrides)
    names = config.get("class_names")
    class_names = tuple(str(n) for n in names) if names else None
    num_classes = config.get("num_classes")
    num_classes = int(num_classes) if num_classes is not None else None
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise RunError(f"{run_dir / CONFIG_FILE} lists {len(class_names)} class names for "
                       f"num_classes {num_classes}.")
    return Run(path=run_dir, model_path=model_path, config=config, kind=kind,
               preprocessing=preprocessing, class_names=class_names,
               class_index=config.get("class_index") or "auto", num_classes=num_classes,
               overrides=tuple(overrides), unsafe=unsafe)
