"""Evaluation as the paper reports it, and top-5 predictions with ImageNet class names.

- **Error rates** (docs/paper.md §6, Tables 1 and 2): top-1 and top-5 error on a
  validation split.
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
- **The run's preprocessing**: everything here takes a `keras_alexnet.runs.Run`
  (`keras_alexnet.runs.open_run`: a run directory of ``train.py``, a model directory of
  ``keras_alexnet.convert``, or a ``.keras`` file), whose `Preprocessing` was resolved
  once from the run's files; `load_eval_source` passes its class order to the data
  source so that validation indices mean what the model's outputs mean. Models are
  loaded safely (`keras_alexnet.runs.load_model`).
- **Predictions**: `predict_files` gives each image's top-5 classes with the run's
  preprocessing; `class_display_names` names them.

ImageNet class names come from `keras_alexnet.imagenet`.

Command line: ``python evaluate.py`` (see its ``--help``) parses flags and calls
`keras_alexnet.runs.open_run`, `load_eval_source`, `run_evaluation`, `format_results`
and `predict_files`.
"""

from __future__ import annotations

import datetime
import sys
import time

import numpy as np
import tensorflow as tf

from keras_alexnet import data as data_lib
from keras_alexnet.backends import on_tensorflow
from keras_alexnet import datasets, sources
from keras_alexnet import run_files
from keras_alexnet.model import outputs_probabilities

CROPS = {"center": 1, "ten": 10}  # crop protocol -> crops per image


class EvaluationError(run_files.RunError):
    """A model, preprocessing or data set that cannot be evaluated as given (the
    message names the problem and the path)."""


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


def probabilities(outputs, from_logits):
    """Class probabilities from a model's outputs: the softmax of logits, else as they are."""
    return tf.nn.softmax(outputs, axis=-1) if from_logits else tf.convert_to_tensor(outputs)


def _softmax_of(model, images, from_logits):
    if on_tensorflow():
        outputs = model(images, training=False)
    else:  # a batch from tf.data, through the backend's own compiled predict step
        outputs = model.predict_on_batch(np.asarray(images))
    return probabilities(tf.cast(outputs, tf.float32), from_logits)


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
    """A compiled (`tf.function`, not XLA) function from a batch to probabilities; on JAX
    and PyTorch a function around the model's compiled predict step.

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
    return tf.function(fn, reduce_retracing=True) if on_tensorflow() else fn


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
# A run on a data set


def load_eval_source(run, data_dir, split="val", *, tfds_name=None, manual_dir=None):
    """The validation source, indexed the way the run's model outputs are.

    The run's ``class_names`` and ``class_index`` are passed to
    `keras_alexnet.datasets.load_source`, so a compact run's folder order, or the ImageNet
    order, is kept even when the split lacks some classes.

    Raises:
        EvaluationError: the data's class count differs from the model's.
        keras_alexnet.sources.DatasetError: the data cannot be listed (names the path).
    """
    source = datasets.load_source(
        data_dir,
        split,
        tfds_name=tfds_name,
        manual_dir=manual_dir,
        class_index=run.class_index,
        class_names=run.class_names,
    )
    check_num_classes(run, source)
    return source


def check_num_classes(run, source):
    """Raises `EvaluationError` naming both counts and paths when they differ."""
    num_classes = run.num_classes if run.num_classes is not None else int(run.model.output_shape[-1])
    if source.num_classes != num_classes:
        hint = ""
        if run.path is None:
            hint = " (--class-index imagenet or compact chooses how folders are indexed)"
        raise EvaluationError(
            f"The model {run.model_path} has {num_classes} classes but the "
            f"data {source.location} has {source.num_classes} ({source.class_index} "
            f"indices){hint}."
        )


def run_evaluation(run, source, *, crops="center", top5=True, batch_size=32, progress=True):
    """Evaluates a run's model on a source with the run's preprocessing (what
    ``evaluate.py`` runs).

    Returns:
        The `evaluate` dict plus ``checkpoint`` (the model file), ``run_dir``, ``data``,
        ``split``, ``class_index``, ``listed`` (files listed), ``non_image_files``,
        ``preprocessing``, ``versions`` and ``date`` (UTC).
    """
    check_num_classes(run, source)
    counter = data_lib.SkipCounter()
    dataset = data_lib.preprocessed_dataset(source, run.preprocessing, batch_size, crops, counter)
    result = evaluate(
        run.model,
        dataset,
        crops=crops,
        ks=(1, 5) if top5 else (1,),
        counter=counter,
        num_images=source.num_examples,
        progress=progress,
    )
    result.update(
        checkpoint=str(run.model_path),
        run_dir=str(run.path) if run.path else None,
        data=source.location,
        split=source.split,
        class_index=source.class_index,
        listed=source.num_examples,
        non_image_files=len(source.non_image_files),
        batch_size=batch_size,
        preprocessing=dict(run.preprocessing.to_json(), overrides=list(run.overrides)),
        versions=run_files.versions(),
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


def top_k_indices(probs, k):
    """Indices of the ``k`` largest scores of each row, largest first; ties rank the lower
    class index first (`tf.math.top_k`). The one ranking of predictions: `top_k`,
    `keras_alexnet.applications.decode_predictions` and the exported SavedModel's
    ``top5_ids`` use it.

    Args:
        probs: ``(n, classes)`` scores, numpy or tensor (also inside `tf.function`).
        k: how many (at most ``classes``).

    Returns:
        int32 ``(n, k)``: a numpy array for a numpy input, else a tensor.
    """
    indices = tf.math.top_k(probs, k=k).indices
    return indices if tf.is_tensor(probs) else indices.numpy()


def top_k(probs, class_names, k=5):
    """The ``k`` most probable classes of each row of ``probs`` (`top_k_indices`).

    Args:
        probs: array ``(n, classes)`` (or ``(classes,)``).
        class_names: ``classes`` names (or None for the class indices as strings).
        k: how many.

    Returns:
        a list of ``n`` lists of ``(name, probability)``, most probable first (ties:
        lower class index first).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[None]
    if class_names is None:
        class_names = [str(i) for i in range(probs.shape[1])]
    if len(class_names) != probs.shape[1]:
        raise ValueError(
            f"{len(class_names)} class names for a model with {probs.shape[1]} classes."
        )
    order = top_k_indices(probs, min(int(k), probs.shape[1]))
    return [[(class_names[j], float(p[j])) for j in row] for p, row in zip(probs, order)]


def predict_files(run, paths, *, crops="center", k=5, batch_size=16):
    """Top-``k`` classes of image files with the run's preprocessing.

    The images go through the evaluation pipeline itself (`keras_alexnet.data.preprocessed_dataset`:
    shorter side to the resize size, central square, centre crop or ten crops, the
    run's mean, std and channel order), each labelled with its position in ``paths`` so
    that the undecodable ones, which the pipeline drops, are known.

    Args:
        run: a `keras_alexnet.runs.Run`.
        paths: image files or directories (searched recursively).
        crops: ``"center"`` or ``"ten"``.
        k: classes per image (at most the model's).
        batch_size: images per batch.

    Returns:
        A list with one dict per file, in order: ``path``, and ``top`` (a list of
        ``(class index, display name, probability)``, most probable first) and
        ``probabilities`` (all classes), or ``error`` (the file could not be decoded).
    """
    files = [str(p) for p in sources.list_images(paths)]
    if not files:
        raise EvaluationError(f"No image files in {', '.join(map(str, paths))}.")
    num_classes = int(run.model.output_shape[-1])
    names = run.display_names()
    index_names = [str(i) for i in range(num_classes)]
    positions = np.arange(len(files), dtype=np.int32)
    source = sources.Source(
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
    dataset = data_lib.preprocessed_dataset(source, run.preprocessing, batch_size, crops)
    predict = make_predict_fn(run.model, crops)
    found = {}
    for images, position in dataset:
        probs = predict(images).numpy()
        for p, row in zip(position.numpy(), probs):
            found[int(p)] = row
    k = min(k, num_classes)
    out = []
    for i, path in enumerate(files):
        if i not in found:
            out.append({"path": path, "error": "cannot be decoded as an image"})
            continue
        ranked = top_k(found[i], index_names, k)[0]
        out.append({
            "path": path,
            "top": [(int(j), names[int(j)], float(p)) for j, p in ranked],
            "probabilities": [float(p) for p in found[i]],
        })
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
