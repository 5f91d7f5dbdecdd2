"""Evaluation as the paper reports it, and top-5 predictions with ImageNet class names.

- **Error rates** (§6, Tables 1 and 2): top-1 and top-5 error on a validation split.
  `in_top_k` / `topk_counts` count a label as found when its score is among the ``k``
  largest; ties at the k-th place count as found, as `tf.math.in_top_k` documents
  ("if multiple classes have the same prediction value and straddle the top-k
  boundary, all of those classes are considered to be in the top k"), so the numbers
  agree with the ``top1_error`` / ``top5_error`` logged during training
  (`keras_alexnet.metrics.TopKError`). A row with a non-finite score counts as not
  found, also as `tf.math.in_top_k` does.
- **Crops** (§4.1): the centre crop, or the paper's ten-crop protocol, "the network
  makes a prediction by extracting five 224x224 patches (the four corner patches and
  the center patch) as well as their horizontal reflections ..., and averaging the
  predictions made by the network's softmax layer on the ten patches"
  (`ten_crop_probs`; the crops come from `keras_alexnet.data.evaluation_dataset`).
- **The run's preprocessing**: `load_checkpoint` loads what ``train.py`` saves (a run
  directory, preferring ``best.keras`` to ``last.keras``, or a ``.keras`` file inside
  one) together with what that run used: crop size, resize size and mean mode from
  ``config.json``'s ``recipe``, the mean image from ``stats.npz``, and the class order
  (``class_names``, ``class_index``), which `load_eval_source` passes to the data
  source so that validation indices mean what the model's outputs mean. A bare
  ``.keras`` file outside a run has no recorded preprocessing, so the caller must say
  which statistics to subtract (``stats``) or that none are (``mean="none"``).
- **Safe loading**: models are loaded with ``keras.models.load_model(...,
  safe_mode=True)``; a file that would run arbitrary code on loading (a ``Lambda``
  layer holding Python bytecode) raises `UnsafeModelError` unless ``unsafe=True``.
- **Predictions**: `predict_files` gives each image's top-5 classes with the run's
  preprocessing; `class_display_names` names them.

ImageNet class names. The wnids in class-index order come from tensorflow-datasets
(``datasets/imagenet2012/labels.txt``, `keras_alexnet.data.imagenet_class_names`). The
human-readable names ship with this package in ``imagenet_synset_words.txt``: an
unchanged copy of Caffe's ``data/ilsvrc12/synset_words.txt`` (BSD 2-Clause, Caffe /
BVLC; the names are WordNet 3.0 lemmas, WordNet 3.0 license, Princeton University),
with provenance, checksum and both license texts in its header. Nothing is downloaded
at run time. `imagenet_synset_words` reads it and `imagenet_class_names_human` checks
that its order is TFDS's before returning the names.

Command line: ``python evaluate.py`` (see its ``--help``) parses flags and calls
`load_checkpoint`, `load_eval_source`, `run_evaluation`, `format_results` and
`predict_files`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import keras_alexnet  # noqa: F401  (registers the custom layers for load_model)
from keras_alexnet import data as data_lib
from keras_alexnet import stats as stats_lib
from keras_alexnet.visualize import find_model, list_images, top_k

RUN_MODELS = ("best.keras", "last.keras")  # a run's models, in the order find_model tries them
CROPS = {"center": 1, "ten": 10}  # crop protocol -> crops per image
SYNSET_WORDS_FILE = Path(__file__).with_name("imagenet_synset_words.txt")


class EvaluationError(ValueError):
    """A checkpoint, preprocessing or data set that cannot be evaluated as given (the
    message names the problem and the path)."""


class CheckpointNotFoundError(EvaluationError, FileNotFoundError):
    """A checkpoint path (run directory or ``.keras`` file) that does not exist."""


class UnsafeModelError(EvaluationError):
    """A model file that would execute arbitrary code when loaded."""


# ---------------------------------------------------------------------------------------
# ImageNet class names


_CACHE = {}


def imagenet_synset_words():
    """The shipped ``imagenet_synset_words.txt``: wnid -> comma-separated names.

    Returns:
        A dict of 1000 entries in the file's (class-index) order, e.g.
        ``{"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius
        auratus", ...}``. Source and license: the module docstring.
    """
    if "words" not in _CACHE:
        words = {}
        with open(SYNSET_WORDS_FILE, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                wnid, _, names = line.partition(" ")
                words[wnid] = names.strip()
        _CACHE["words"] = words
    return _CACHE["words"]


def imagenet_class_names_human(short=False):
    """Human-readable names of the 1000 ImageNet classes, in class-index order.

    Element ``i`` names class ``i`` of `keras_alexnet.data.imagenet_class_names` (the
    wnids of tensorflow-datasets' ``labels.txt``): index 0 is ``"tench, Tinca tinca"``
    (n01440764), index 1 ``"goldfish, Carassius auratus"`` (n01443537).

    Args:
        short: only the first name of each synset (``"tench"``). Some first names
            repeat (two classes are called ``"crane"``: the bird and the machine), so
            show the wnid beside a short name.

    Returns:
        A tuple of 1000 strings.

    Raises:
        EvaluationError: the shipped file and tensorflow-datasets disagree on the order.
    """
    words = imagenet_synset_words()
    wnids = data_lib.imagenet_class_names()
    if list(words) != list(wnids):
        raise EvaluationError(
            f"{SYNSET_WORDS_FILE} does not list the 1000 ImageNet wnids in the order of "
            "tensorflow-datasets' imagenet2012/labels.txt; the class names would be wrong."
        )
    names = tuple(words[w] for w in wnids)
    return tuple(n.split(",")[0].strip() for n in names) if short else names


def class_display_names(class_names, num_classes):
    """Names to print for a model's ``num_classes`` outputs.

    ImageNet wnids become ``"short name (wnid)"`` (``"tench (n01440764)"``); other
    names (a compact run's folder names: ``"disc"``, ``"square"``, ...) stay as they
    are. Without ``class_names``, a 1000-class model is taken to speak the ImageNet
    order and any other is named by index.

    Args:
        class_names: the run's ``class_names`` (or None).
        num_classes: the model's number of outputs.

    Returns:
        A list of ``num_classes`` strings.
    """
    if class_names is None:
        if num_classes != 1000:
            return [f"class {i}" for i in range(num_classes)]
        class_names = data_lib.imagenet_class_names()
    if len(class_names) != num_classes:
        raise EvaluationError(
            f"{len(class_names)} class names for a model with {num_classes} outputs."
        )
    words = imagenet_synset_words()
    return [
        f"{words[n].split(',')[0].strip()} ({n})" if n in words else str(n)
        for n in class_names
    ]


# ---------------------------------------------------------------------------------------
# Counting


def in_top_k(probs, labels, k):
    """Whether each label is among the ``k`` highest scores of its row.

    The semantics of `tf.math.in_top_k`: label ``y`` of a row counts when fewer than
    ``k`` classes score strictly higher than ``y`` does, so a label whose score ties
    the k-th largest counts as found; a row holding a non-finite score never counts.

    Args:
        probs: scores ``(n, classes)`` (probabilities or logits).
        labels: int class indices ``(n,)``.
        k: how many top classes (>= 1).

    Returns:
        bool array ``(n,)``.
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (n, classes), got shape {probs.shape}.")
    if labels.shape != probs.shape[:1]:
        raise ValueError(f"labels must be ({probs.shape[0]},), got shape {labels.shape}.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= probs.shape[1])
    if np.any(bad):
        raise ValueError(
            f"label {int(labels[bad][0])} is outside the model's {probs.shape[1]} classes."
        )
    target = probs[np.arange(len(labels)), labels]
    higher = np.sum(probs > target[:, None], axis=1)
    return np.all(np.isfinite(probs), axis=1) & (higher < k)


def topk_counts(probs, labels, k):
    """How many labels are among the ``k`` highest scores of their row (`in_top_k`).

    Top-k error is ``1 - topk_counts(probs, labels, k) / len(labels)``.
    """
    return int(np.sum(in_top_k(probs, labels, k)))


# ---------------------------------------------------------------------------------------
# Predicting


def outputs_probabilities(model):
    """Whether ``model`` ends in a softmax (True) or gives logits (False).

    A last layer that declares an activation other than softmax (``fc8`` of
    ``AlexNet(classifier_activation=None)``) means logits; a last layer without an
    activation attribute is taken to give probabilities.
    """
    activation = getattr(model.layers[-1], "activation", None)
    if activation is None:
        return True
    return getattr(activation, "__name__", "") == "softmax"


def _softmax_of(model, images, from_logits):
    y = tf.cast(model(images, training=False), tf.float32)
    return tf.nn.softmax(y, axis=-1) if from_logits else y


def _ten_crop_softmax(model, crops, from_logits):
    shape = tf.shape(crops)
    flat = tf.reshape(crops, [-1, *crops.shape[2:]])  # keep the static crop shape
    probs = _softmax_of(model, flat, from_logits)
    return tf.reduce_mean(tf.reshape(probs, [shape[0], shape[1], -1]), axis=1)


def _from_logits(model, from_logits):
    return (not outputs_probabilities(model)) if from_logits is None else bool(from_logits)


def ten_crop_probs(model, crops, from_logits=None):
    """The paper's ten-crop prediction (§4.1): the softmax averaged over each image's crops.

    Args:
        model: a Keras model (run in inference mode: no dropout).
        crops: float32 ``(batch, 10, c, c, 3)``, e.g. a batch of
            ``evaluation_dataset(..., crops="ten")`` (any number of crops per image
            works the same way).
        from_logits: whether the model outputs logits (a softmax is applied before
            averaging); None decides with `outputs_probabilities`.

    Returns:
        float32 numpy array ``(batch, classes)``.
    """
    crops = tf.convert_to_tensor(crops, tf.float32)
    if crops.shape.rank != 5:
        raise ValueError(f"crops must be (batch, crops, h, w, 3), got shape {crops.shape}.")
    return _ten_crop_softmax(model, crops, _from_logits(model, from_logits)).numpy()


def make_predict_fn(model, crops="center", from_logits=None):
    """A compiled (`tf.function`, not XLA) function from a batch to probabilities.

    Args:
        model: a Keras model.
        crops: ``"center"``: images ``(batch, c, c, 3)``; ``"ten"``: crops
            ``(batch, 10, c, c, 3)``, softmax averaged per image (`ten_crop_probs`).
        from_logits: see `ten_crop_probs`.

    Returns:
        A callable returning a float32 tensor ``(batch, classes)``.
    """
    if crops not in CROPS:
        raise ValueError(f"crops must be one of {sorted(CROPS)}, got {crops!r}.")
    logits = _from_logits(model, from_logits)
    if crops == "ten":
        fn = lambda x: _ten_crop_softmax(model, x, logits)  # noqa: E731
    else:
        fn = lambda x: _softmax_of(model, x, logits)  # noqa: E731
    return tf.function(fn, reduce_retracing=True)


def evaluate(
    model,
    dataset,
    *,
    crops="center",
    ks=(1, 5),
    from_logits=None,
    counter=None,
    num_images=None,
    progress=True,
    keep_probs=False,
):
    """Top-k errors of ``model`` over one pass of ``dataset``.

    Args:
        model: a Keras model.
        dataset: iterable of ``(images, labels)`` batches, e.g.
            `keras_alexnet.data.evaluation_dataset`; images ``(batch, c, c, 3)`` for
            ``crops="center"``, ``(batch, 10, c, c, 3)`` for ``crops="ten"``.
        crops: ``"center"`` or ``"ten"`` (the softmax averaged over the ten crops).
        ks: the k of each reported top-k error (the paper: 1 and 5).
        from_logits: see `ten_crop_probs`.
        counter: the `keras_alexnet.data.SkipCounter` given to the pipeline, to report
            the images skipped as unreadable.
        num_images: expected number of images (the progress bar's total).
        progress: show a tqdm progress bar (on stderr).
        keep_probs: also return every image's probabilities and label (e.g. to average
            several models' softmax as the paper's 5-CNN row does).

    Returns:
        dict with ``images`` (evaluated), ``skipped`` (None without a counter),
        ``top{k}_correct`` and ``top{k}_error`` for each k, ``crops``,
        ``crops_per_image``, ``num_classes``, ``seconds`` (wall time of the pass,
        tracing included) and ``images_per_second``; with ``keep_probs`` also
        ``probs`` (float32 ``(images, classes)``) and ``labels``.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}.")
    predict = make_predict_fn(model, crops, from_logits)
    correct = dict.fromkeys(ks, 0)
    count, num_classes = 0, None
    kept_probs, kept_labels = [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_images, unit="img", desc=f"evaluate ({crops})", file=sys.stderr)
    # A batch has the model's input rank, plus the crops axis for ten crops.
    want_rank = len(model.input_shape) + (1 if crops == "ten" else 0)
    start = time.perf_counter()
    for images, labels in dataset:
        if len(images.shape) != want_rank:
            raise ValueError(
                f"crops={crops!r} needs batches of rank {want_rank} for a model of input "
                f"shape {model.input_shape}, got shape {tuple(images.shape)}."
            )
        probs = predict(images).numpy()
        labels = np.asarray(labels)
        num_classes = probs.shape[1]
        for k in ks:
            correct[k] += topk_counts(probs, labels, k)
        count += len(labels)
        if keep_probs:
            kept_probs.append(probs)
            kept_labels.append(labels)
        if bar is not None:
            bar.update(len(labels))
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    if count == 0:
        skipped = f" ({counter.skipped} unreadable)" if counter is not None else ""
        raise EvaluationError(f"No image could be evaluated{skipped}.")
    result = {"images": count, "skipped": counter.skipped if counter is not None else None}
    for k in ks:
        result[f"top{k}_error"] = 1.0 - correct[k] / count
    for k in ks:
        result[f"top{k}_correct"] = correct[k]
    result.update(
        crops=crops,
        crops_per_image=CROPS[crops],
        num_classes=int(num_classes),
        seconds=seconds,
        images_per_second=count / seconds if seconds > 0 else float("inf"),
    )
    if keep_probs:
        result["probs"] = np.concatenate(kept_probs)
        result["labels"] = np.concatenate(kept_labels)
    return result


# ---------------------------------------------------------------------------------------
# Checkpoints and their preprocessing


def load_model(path, *, unsafe=False):
    """Loads a ``.keras`` model for inference (uncompiled), safely by default.

    Args:
        path: the ``.keras`` file.
        unsafe: allow a model that runs arbitrary code on loading (a ``Lambda`` layer
            with Python bytecode): ``safe_mode=False``. Only for files you trust.

    Raises:
        UnsafeModelError: the file needs ``unsafe=True``.
        EvaluationError: the file is not a readable Keras model.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise EvaluationError(
            f"Cannot load the model {path}: not a .keras archive (a zip file); is it "
            "truncated, or another format?"
        )
    try:
        return keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except ValueError as e:
        message = str(e)
        if not unsafe and ("safe_mode" in message or "unsafe_deserialization" in message):
            raise UnsafeModelError(
                f"Refusing to load {path}: it holds code that would run when the model is "
                f"loaded ({message.split('.')[0]}). Load it only if you trust where it came "
                "from, with --unsafe-load (keras safe_mode=False)."
            ) from e
        raise EvaluationError(f"Cannot load the model {path}: {message}") from e
    except (OSError, zipfile.BadZipFile, KeyError, TypeError) as e:
        raise EvaluationError(f"Cannot load the model {path}: {type(e).__name__}: {e}") from e


def find_checkpoint(path):
    """The model file and the run directory (or None) a ``--checkpoint`` path names.

    - A run directory (holding ``config.json``): its ``best.keras``, else
      ``last.keras``.
    - A ``.keras`` file: itself; its run directory is its folder when that holds
      ``config.json`` (``RUN/best.keras``), or the folder above for
      ``RUN/checkpoints/epoch-NNNN.keras``.
    - A directory without ``config.json`` is searched for a model the same way but has
      no run (its preprocessing is unknown).

    Returns:
        ``(model_path, run_dir or None)``.

    Raises:
        CheckpointNotFoundError: nothing at ``path``, or a directory without a model.
        EvaluationError: a file that is not ``.keras``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointNotFoundError(f"Checkpoint not found: {path} does not exist.")
    if path.is_dir():
        try:
            model_path = find_model(path)
        except FileNotFoundError as e:
            raise CheckpointNotFoundError(str(e)) from e
        return model_path, path if (path / "config.json").is_file() else None
    if path.suffix != ".keras":
        raise EvaluationError(
            f"{path} is not a .keras model file; pass a run directory of train.py or its "
            f"{' / '.join(RUN_MODELS)}."
        )
    candidates = [path.parent]
    if path.parent.name == "checkpoints":
        candidates.append(path.parent.parent)
    run_dir = next((d for d in candidates if (d / "config.json").is_file()), None)
    return path, run_dir


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvaluationError(f"Cannot read {path}: {e}") from e


def _load_stats(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"Statistics file not found: {path}.")
    try:
        return stats_lib.load_stats(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise EvaluationError(
            f"Cannot read the statistics {path} (expected an .npz from "
            f"`python -m keras_alexnet.stats`): {e}"
        ) from e


def default_resize_size(crop_size):
    """The paper's 256 for its 227 crops, the same proportion for other crop sizes."""
    return int(round(crop_size * data_lib.RESIZE_SIZE / data_lib.CROP_SIZE))


@dataclasses.dataclass(eq=False)
class Checkpoint:
    """A loaded model and the preprocessing it must be evaluated with.

    Attributes:
        model: the Keras model (uncompiled).
        model_path: its ``.keras`` file.
        run_dir: the ``train.py`` run directory it belongs to, or None.
        crop_size: side of the crops (the model's input size).
        resize_size: side of the central square the crops are taken from.
        mean: ``"image"``, ``"channel"`` or ``"none"``.
        stats: the training statistics (`keras_alexnet.stats.DatasetStats`) or None.
        stats_path: where ``stats`` came from.
        class_names: the run's class names (its output order), or None.
        class_index: ``"imagenet"`` / ``"compact"`` (the run's) or ``"auto"``.
        num_classes: the model's number of outputs.
        overrides: the run settings replaced by explicit arguments, as messages.
    """

    model: keras.Model
    model_path: Path
    run_dir: Path | None
    crop_size: int
    resize_size: int
    mean: str
    stats: stats_lib.DatasetStats | None
    stats_path: Path | None
    class_names: tuple | None
    class_index: str
    num_classes: int
    overrides: tuple = ()

    def preprocessing(self):
        """JSON-ready description of the preprocessing used."""
        return {
            "crop_size": self.crop_size,
            "resize_size": self.resize_size,
            "mean": self.mean,
            "stats": str(self.stats_path) if self.stats_path else None,
            "from": f"{self.run_dir / 'config.json'}" if self.run_dir else "arguments",
            "overrides": list(self.overrides),
        }

    def display_names(self):
        """`class_display_names` of this model's outputs."""
        return class_display_names(self.class_names, self.num_classes)


def load_checkpoint(
    path,
    *,
    stats=None,
    mean=None,
    resize_size=None,
    class_index="auto",
    unsafe=False,
):
    """Loads a model with the preprocessing of the run that trained it.

    With a run (see `find_checkpoint`): crop size, resize size and mean mode come from
    the run's ``config.json`` (``recipe``), the mean image from its ``stats.npz``, the
    class order from ``class_names`` / ``class_index``. ``stats``, ``mean`` and
    ``resize_size`` given explicitly replace the run's values (listed in
    ``Checkpoint.overrides``). Without a run, the preprocessing must be given: ``stats``
    (mean ``"image"`` by default) or ``mean="none"``; the resize size defaults to
    ``crop * 256 / 227``.

    Args:
        path: a run directory or a ``.keras`` file.
        stats: path of a statistics ``.npz`` (``python -m keras_alexnet.stats``).
        mean: ``"image"``, ``"channel"`` or ``"none"``.
        resize_size: side of the central square.
        class_index: for a model without a run: ``"auto"``, ``"imagenet"`` or
            ``"compact"`` (see `keras_alexnet.data`).
        unsafe: see `load_model`.

    Returns:
        A `Checkpoint`.

    Raises:
        CheckpointNotFoundError, UnsafeModelError, EvaluationError: with the path.
    """
    if mean not in (None, "image", "channel", "none"):
        raise ValueError(f"mean must be 'image', 'channel' or 'none', got {mean!r}.")
    model_path, run_dir = find_checkpoint(path)
    config = _read_json(run_dir / "config.json") if run_dir else None
    if run_dir is None and stats is None and mean != "none":  # checked before the slow load
        where = f"{model_path.parent / 'config.json'} does not exist"
        raise EvaluationError(
            f"{model_path} is not inside a train.py run directory ({where}), so the "
            "preprocessing it was trained with is unknown. Pass it explicitly: "
            "--stats FILE (the training set's statistics, from `python -m "
            "keras_alexnet.stats`) or --mean none."
        )
    model = load_model(model_path, unsafe=unsafe)

    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise EvaluationError(
            f"{model_path}: expected a model of square RGB images (None, c, c, 3), "
            f"got input shape {shape}."
        )
    crop = int(shape[1])
    num_classes = int(model.output_shape[-1])
    overrides = []

    if run_dir is not None:
        recipe = config.get("recipe") or {}
        run_crop = recipe.get("crop_size")
        if run_crop is not None and int(run_crop) != crop:
            raise EvaluationError(
                f"{model_path} takes {crop}x{crop} inputs but its run "
                f"{run_dir / 'config.json'} says crop_size {run_crop}."
            )
        run_classes = config.get("num_classes")
        if run_classes is not None and int(run_classes) != num_classes:
            raise EvaluationError(
                f"{model_path} has {num_classes} outputs but its run "
                f"{run_dir / 'config.json'} says num_classes {run_classes}."
            )
        run_mean = recipe.get("mean", "image")
        run_resize = int(recipe.get("resize_size") or default_resize_size(crop))
        if mean is not None and mean != run_mean:
            overrides.append(f"mean {mean!r} instead of the run's {run_mean!r}")
        if resize_size is not None and resize_size != run_resize:
            overrides.append(f"resize size {resize_size} instead of the run's {run_resize}")
        mean = mean or run_mean
        resize_size = resize_size or run_resize
        if stats is not None:
            overrides.append(f"statistics {stats} instead of the run's {run_dir / 'stats.npz'}")
            stats_path = Path(stats)
        elif mean != "none":
            stats_path = run_dir / "stats.npz"
            if not stats_path.is_file():
                raise CheckpointNotFoundError(
                    f"The run {run_dir} subtracted the {run_mean} mean but its statistics "
                    f"{stats_path} are missing; pass --stats FILE with the statistics it "
                    "was trained with."
                )
        else:
            stats_path = None
        names = config.get("class_names")
        class_names = tuple(str(n) for n in names) if names else None
        if class_names is not None and len(class_names) != num_classes:
            raise EvaluationError(
                f"{run_dir / 'config.json'} lists {len(class_names)} class names for a "
                f"model with {num_classes} outputs ({model_path})."
            )
        class_index = config.get("class_index") or "auto"
    else:
        stats_path = Path(stats) if stats is not None else None
        mean = mean or ("image" if stats is not None else "none")
        resize_size = resize_size or default_resize_size(crop)
        class_names = None

    if stats is not None and mean == "none":
        raise EvaluationError(
            f"The statistics {stats} would not be used: the mean is 'none'. Pass "
            "--mean image or channel with them, or leave --stats out."
        )
    stats_obj = _load_stats(stats_path) if mean != "none" else None
    if stats_obj is None:
        stats_path = None
    if resize_size < crop:
        raise EvaluationError(
            f"resize size {resize_size} is smaller than the model's {crop}x{crop} crops "
            f"({model_path})."
        )
    return Checkpoint(
        model=model,
        model_path=Path(model_path),
        run_dir=run_dir,
        crop_size=crop,
        resize_size=int(resize_size),
        mean=mean,
        stats=stats_obj,
        stats_path=stats_path,
        class_names=class_names,
        class_index=class_index,
        num_classes=num_classes,
        overrides=tuple(overrides),
    )


def load_eval_source(checkpoint, data_dir, split="val", *, tfds_name=None, manual_dir=None):
    """The validation source, indexed the way the checkpoint's outputs are.

    The run's ``class_names`` and ``class_index`` are passed to
    `keras_alexnet.data.load_source`, so a compact run's folder order, or the ImageNet
    order, is kept even when the split lacks some classes.

    Raises:
        EvaluationError: the data's class count differs from the model's.
        keras_alexnet.data.DatasetError: the data cannot be listed (names the path).
    """
    source = data_lib.load_source(
        data_dir,
        split,
        tfds_name=tfds_name,
        manual_dir=manual_dir,
        class_index=checkpoint.class_index,
        class_names=checkpoint.class_names,
    )
    check_num_classes(checkpoint, source)
    return source


def check_num_classes(checkpoint, source):
    """Raises `EvaluationError` naming both counts and paths when they differ."""
    if source.num_classes != checkpoint.num_classes:
        hint = ""
        if checkpoint.run_dir is None:
            hint = " (--class-index imagenet or compact chooses how folders are indexed)"
        raise EvaluationError(
            f"The model {checkpoint.model_path} has {checkpoint.num_classes} classes but the "
            f"data {source.location} has {source.num_classes} ({source.class_index} "
            f"indices){hint}."
        )


def _versions():
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_alexnet": keras_alexnet.__version__,
    }


def checkpoint_dataset(checkpoint, source, crops, batch_size, counter=None):
    """`keras_alexnet.data.evaluation_dataset` with the checkpoint's own preprocessing."""
    return data_lib.evaluation_dataset(
        source,
        batch_size,
        stats=checkpoint.stats,
        mean=checkpoint.mean,
        crops=crops,
        crop_size=checkpoint.crop_size,
        resize_size=checkpoint.resize_size,
        counter=counter,
    )


def run_evaluation(checkpoint, source, *, crops="center", top5=True, batch_size=32, progress=True):
    """Evaluates a checkpoint on a source with its preprocessing (what ``evaluate.py``
    runs).

    Returns:
        The `evaluate` dict plus ``checkpoint``, ``run_dir``, ``data``, ``split``,
        ``class_index``, ``listed`` (files listed), ``non_image_files``,
        ``preprocessing``, ``versions`` and ``date`` (UTC).
    """
    check_num_classes(checkpoint, source)
    counter = data_lib.SkipCounter()
    dataset = checkpoint_dataset(checkpoint, source, crops, batch_size, counter)
    result = evaluate(
        checkpoint.model,
        dataset,
        crops=crops,
        ks=(1, 5) if top5 else (1,),
        counter=counter,
        num_images=source.num_examples,
        progress=progress,
    )
    result.update(
        checkpoint=str(checkpoint.model_path),
        run_dir=str(checkpoint.run_dir) if checkpoint.run_dir else None,
        data=source.location,
        split=source.split,
        class_index=source.class_index,
        listed=source.num_examples,
        non_image_files=len(source.non_image_files),
        batch_size=batch_size,
        preprocessing=checkpoint.preprocessing(),
        versions=_versions(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    return result


def format_results(results):
    """The small table ``evaluate.py`` prints (one row per result dict).

    Args:
        results: a `run_evaluation` / `evaluate` dict, or a list of them.

    Returns:
        str: a header line per distinct checkpoint and data, then the table.
    """
    if isinstance(results, dict):
        results = [results]
    top5 = any("top5_error" in r for r in results)
    header = ["crops", "images", "skipped", "top-1 error"]
    header += ["top-5 error"] if top5 else []
    header += ["seconds", "images/s"]
    rows = []
    for r in results:
        skipped = "-" if r.get("skipped") is None else str(r["skipped"])
        row = [f"{r['crops']} ({r['crops_per_image']})", str(r["images"]), skipped,
               f"{r['top1_error']:.2%}"]
        if top5:
            row.append(f"{r['top5_error']:.2%}" if "top5_error" in r else "-")
        row += [f"{r['seconds']:.1f}", f"{r['images_per_second']:.1f}"]
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = []
    for r in results:
        if "checkpoint" in r:
            lines.append(f"{r['checkpoint']} on {r['data']} ({r['class_index']} indices, "
                         f"{r['num_classes']} classes)")
    lines = list(dict.fromkeys(lines))
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    lines.append(fmt(header))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt(row) for row in rows)
    return "\n".join(lines)


def json_ready(results):
    """``results`` without NumPy arrays (``probs``, ``labels``), for ``json.dump``."""
    return {k: v for k, v in results.items() if not isinstance(v, np.ndarray)}


# ---------------------------------------------------------------------------------------
# Predictions for image files


def predict_files(checkpoint, paths, *, crops="center", k=5, batch_size=16):
    """Top-``k`` classes of image files with the checkpoint's preprocessing.

    The images go through the evaluation pipeline itself
    (`keras_alexnet.data.evaluation_dataset`: shorter side to the resize size, central
    square, centre crop or ten crops, the run's mean subtracted), each labelled with its
    position in ``paths`` so that the undecodable ones, which the pipeline drops, are
    known.

    Args:
        checkpoint: a `Checkpoint`.
        paths: image files or directories (searched recursively).
        crops: ``"center"`` or ``"ten"``.
        k: classes per image (at most the model's).
        batch_size: images per batch.

    Returns:
        A list with one dict per file, in order: ``path``, and ``top`` (a list of
        ``(class index, display name, probability)``, most probable first) or
        ``error`` (the file could not be decoded).
    """
    files = [str(p) for p in list_images(paths)]
    if not files:
        raise EvaluationError(f"No image files in {', '.join(map(str, paths))}.")
    names = checkpoint.display_names()
    index_names = [str(i) for i in range(checkpoint.num_classes)]
    positions = np.arange(len(files), dtype=np.int32)
    source = data_lib.Source(
        location="predict",
        split="predict",
        class_names=tuple(files),
        num_classes=len(files),
        class_index="compact",
        dataset=tf.data.Dataset.from_tensor_slices((np.array(files, dtype=object), positions)),
        element="path",
        num_examples=len(files),
        paths=np.array(files, dtype=object),
        labels=positions,
    )
    dataset = checkpoint_dataset(checkpoint, source, crops, batch_size)
    predict = make_predict_fn(checkpoint.model, crops)
    found = {}
    for images, position in dataset:
        probs = predict(images).numpy()
        for p, row in zip(position.numpy(), probs):
            found[int(p)] = row
    k = min(k, checkpoint.num_classes)
    out = []
    for i, path in enumerate(files):
        if i not in found:
            out.append({"path": path, "error": "cannot be decoded as an image"})
            continue
        ranked = top_k(found[i], index_names, k)[0]
        out.append(
            {"path": path, "top": [(int(j), names[int(j)], float(p)) for j, p in ranked]}
        )
    return out


def format_predictions(predictions):
    """Text of `predict_files` results: each path, then its ranked classes."""
    lines = []
    for item in predictions:
        lines.append(item["path"])
        if "error" in item:
            lines.append(f"  error: {item['error']}")
            continue
        for rank, (_, name, prob) in enumerate(item["top"], 1):
            lines.append(f"  {rank}. {prob:7.2%}  {name}")
    return "\n".join(lines)
