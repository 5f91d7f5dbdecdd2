"""A trained (or converted) AlexNet the ``keras.applications`` way: `preprocess_input`
and `decode_predictions`.

``keras.applications`` models share one preprocessing per architecture; here every run
records its own (`keras_alexnet.preprocessing.Preprocessing`: the training set's mean image or a
converted network's channel mean, std and channel order), so both functions take the
run::

    run = keras_alexnet.runs.open_run("runs/default")     # or pass the path itself
    crops = run.preprocessing.load(["cat.jpg"])           # RGB [0, 255] centre crops
    probs = run.model(keras_alexnet.preprocess_input(crops, run=run))
    keras_alexnet.decode_predictions(probs, top=5, run=run)
    # [[('n02123045', 'tabby', 0.61), ...]]   an ImageNet run
    # [[('disc', 'disc', 0.93), ...]]          a compact run (its folder names)

`preprocess_input` is `keras_alexnet.preprocessing.Preprocessing.network_input`, a pure
TF function (numpy in, numpy out; tensor in, tensor out; usable inside
`tf.data.Dataset.map` and `tf.function`), the same ops the evaluation pipeline applies
to a centre crop.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_alexnet import imagenet
from keras_alexnet import runs
from keras_alexnet.evaluation import top_k_indices


def as_run(run):
    """``run`` itself when it is a `keras_alexnet.runs.Run`, else `open_run(run)` (a run or
    model directory, a ``.keras`` file inside one, or named weights: ``"bvlc_alexnet"``)."""
    if isinstance(run, runs.Run):
        return run
    if run is None:
        raise TypeError("run is required: a keras_alexnet.runs.Run or the path of a run "
                        "(every run records its own preprocessing).")
    return runs.open_run(run)


def preprocess_input(images, run):
    """Turns RGB images in ``[0, 255]`` at the model's crop size into the run's network
    input, like ``keras.applications.<net>.preprocess_input``.

    Args:
        images: numpy array or tensor ``(crop, crop, 3)`` or ``(n, crop, crop, 3)``, RGB,
            pixels in ``[0, 255]`` (any dtype), already resized and cropped (e.g.
            ``run.preprocessing.load(paths)``: shorter side to the resize size, central
            square, centre crop).
        run: a `keras_alexnet.runs.Run`, or the path of one to open with `open_run`.

    Returns:
        float32, the shape of ``images``: a numpy array for a numpy (or list) input, a
        tensor for a tensor input (also inside `tf.function` / `tf.data`).

    Raises:
        ValueError: images of another size than the run's crops.
    """
    pre = as_run(run).preprocessing
    x = images if tf.is_tensor(images) else np.asarray(images)
    shape = tuple(x.shape)
    want = (pre.crop_size, pre.crop_size, 3)
    if len(shape) not in (3, 4) or tuple(shape[-3:]) != want:
        raise ValueError(
            f"preprocess_input takes RGB crops {want} or (n, {pre.crop_size}, {pre.crop_size}, 3) "
            f"(the run's crop size), got shape {shape}. Resize and crop first, e.g. with "
            "run.preprocessing.load(paths).")
    return pre.network_input(x)


def class_ids(run):
    """The ids `decode_predictions` gives a run's outputs: its class names (ImageNet
    wnids, or a compact run's folder names); without names the 1000 ImageNet wnids for a
    1000-class model, else ``"class i"``."""
    num_classes = run.num_classes if run.num_classes is not None else int(run.model.output_shape[-1])
    if run.class_names is not None:
        return list(run.class_names)
    if num_classes == imagenet.NUM_CLASSES:
        return list(imagenet.imagenet_class_names())
    return [f"class {i}" for i in range(num_classes)]


def class_names_of(ids):
    """Short human names for class ids: an ImageNet wnid's first synset word
    (``"n01440764"`` -> ``"tench"``), any other id as it is."""
    words = imagenet.imagenet_synset_words() if any(imagenet.WNID_PATTERN.match(i) for i in ids) else {}
    return [imagenet.short_name(words[i]) if i in words else i for i in ids]


def decode_predictions(preds, top=5, run=None):
    """The ``top`` most probable classes of each row, like
    ``keras.applications.imagenet_utils.decode_predictions``.

    Tuples are ``(class_id, name, probability)``: ``class_id`` is the run's class name
    (an ImageNet wnid ``"n01440764"``, or a compact run's folder name ``"disc"``),
    ``name`` its short human name from the package's synset words (``"tench"``; a
    folder name stays as it is), ``probability`` a Python float. For ImageNet runs this
    is keras' ``(wnid, name, score)`` layout. Ranked by
    `keras_alexnet.evaluation.top_k_indices` (ties: the lower class index first).

    Args:
        preds: probabilities ``(n, classes)`` or ``(classes,)`` (numpy or tensor).
        top: classes per row (at most the model's).
        run: a `keras_alexnet.runs.Run` or the path of one; None: the 1000 ImageNet
            classes in the standard order (``preds`` must have 1000 columns).

    Returns:
        A list with one list of ``top`` tuples per row, most probable first.

    Raises:
        ValueError: ``preds`` does not have the run's number of classes.
    """
    probs = np.asarray(preds, np.float64)
    if probs.ndim == 1:
        probs = probs[None]
    if probs.ndim != 2:
        raise ValueError(f"decode_predictions takes (n, classes) probabilities, got shape {probs.shape}.")
    if run is None:
        ids = list(imagenet.imagenet_class_names())
        where = "the 1000 ImageNet classes (run=None)"
    else:
        run = as_run(run)
        ids = class_ids(run)
        where = f"the run {run.path or run.model_path}"
    if probs.shape[1] != len(ids):
        raise ValueError(f"preds has {probs.shape[1]} classes but {where} has {len(ids)}.")
    names = class_names_of(ids)
    order = top_k_indices(probs, min(max(0, int(top)), probs.shape[1]))
    return [[(ids[j], names[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]
