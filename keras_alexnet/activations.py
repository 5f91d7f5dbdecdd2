"""What a trained AlexNet computes inside, in inference mode (no dropout): the conv
feature maps, the fc7 features of Fig. 4, the class probabilities, and the conv1
kernels of Fig. 3, for any of `keras_alexnet.AlexNet`'s three layouts.

Images. What a model sees is an RGB crop in ``[0, 255]`` with the training mean
subtracted (docs/paper.md §2), or a converted network's own input. Functions that run
the model take ``images`` plus an optional ``preprocess`` callable: with it, ``images``
are plain RGB in ``[0, 255]`` (what is drawn) and ``preprocess(images)`` is what the
model gets, e.g. a run's ``run.preprocessing.network_input``
(`keras_alexnet.preprocessing.Preprocessing`, the same tensor the evaluation pipeline feeds);
without it, ``images`` go to the model as they are.
"""

import numpy as np
import keras
import tensorflow as tf

from keras_alexnet.evaluation import probabilities, top_k
from keras_alexnet.layers import GroupedConv2D, OnDevice
from keras_alexnet.model import outputs_probabilities

CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")


def _unwrap(layer):
    """The layer inside an `OnDevice` wrapper (the tower layers), else the layer itself."""
    return layer.layer if isinstance(layer, OnDevice) else layer


def model_layout(model):
    """Which of the three layouts of `keras_alexnet.AlexNet` a model has.

    Returns:
        ``"towers"`` (conv1_a / conv1_b ...), ``"grouped"`` (conv1, ..., conv2 a grouped
        convolution) or ``"none"`` (one tower without groups).
    """
    names = {layer.name for layer in model.layers}
    if "conv1_a" in names and "conv1_b" in names:
        return "towers"
    if "conv1" in names:
        if "conv2" in names and isinstance(_unwrap(model.get_layer("conv2")), GroupedConv2D):
            return "grouped"
        return "none"
    raise ValueError(
        f"model {model.name!r} has neither a 'conv1_a' nor a 'conv1' layer: not an AlexNet "
        "from keras_alexnet.AlexNet."
    )


def conv_layer_names(model):
    """Names of the model's conv layers in order: conv1_a, conv1_b, ..., conv5_b for the
    two-tower layout, conv1 ... conv5 for the one-device layouts."""
    if model_layout(model) == "towers":
        return [f"{name}_{tower}" for name in CONV_NAMES for tower in "ab"]
    return list(CONV_NAMES)


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float32)


def conv1_kernels(model):
    """The 96 first-layer kernels, tower a's 48 then tower b's 48.

    Two-tower layout: conv1_a's kernels then conv1_b's. One-device layouts: conv1's 96
    output channels in order (the first 48 are tower a in the grouped layout, as
    `keras_alexnet.model.towers_to_grouped` lays them out).

    Returns:
        float32 array ``(96, 11, 11, 3)``: kernel, row, column, RGB.
    """
    if model_layout(model) == "towers":
        kernel = np.concatenate(
            [_numpy(_unwrap(model.get_layer(f"conv1_{t}")).kernel) for t in "ab"], axis=-1
        )
    else:
        kernel = _numpy(_unwrap(model.get_layer("conv1")).kernel)
    return np.transpose(kernel, (3, 0, 1, 2))


def _as_batch(images):
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"images must be (h, w, 3) or (n, h, w, 3), got shape {x.shape}.")
    return x


def model_inputs(images, preprocess=None):
    """``(what is drawn, what the model gets)``: ``images`` as a batch, and
    ``preprocess(images)`` (or the same batch without ``preprocess``)."""
    shown = _as_batch(images)
    fed = shown if preprocess is None else _as_batch(preprocess(shown))
    return shown, fed


def _run(model, x, batch_size=32):
    """Runs a model in inference mode (no dropout) batch by batch; a list of outputs
    becomes a list of arrays."""
    outs = []
    for i in range(0, len(x), batch_size):
        y = model(tf.convert_to_tensor(x[i : i + batch_size]), training=False)
        outs.append([_numpy(t) for t in y] if isinstance(y, (list, tuple)) else [_numpy(y)])
    arrays = [np.concatenate(parts, axis=0) for parts in zip(*outs)]
    return arrays


def feature_maps(model, image, layers=None, preprocess=None):
    """The output maps of the conv layers (after their ReLU) for one image.

    Args:
        model: an AlexNet from `keras_alexnet.AlexNet`, any layout.
        image: one model input ``(h, w, 3)`` or ``(1, h, w, 3)``.
        layers: layer names; default `conv_layer_names(model)` (conv1_a, conv1_b, ...,
            conv5_b, or conv1 ... conv5).
        preprocess: optional callable applied to the image batch first.

    Returns:
        dict layer name -> float32 array ``(H, W, C)``, in layer order.
    """
    _, x = model_inputs(image, preprocess)
    if len(x) != 1:
        raise ValueError(f"feature_maps takes one image, got {len(x)}.")
    layers = list(conv_layer_names(model) if layers is None else layers)
    extractor = keras.Model(model.input, [model.get_layer(n).output for n in layers])
    outs = _run(extractor, x)
    return {name: out[0] for name, out in zip(layers, outs)}


def predict_probs(model, images, preprocess=None, batch_size=32):
    """Class probabilities ``(n, classes)`` in inference mode; a logits head
    (`keras_alexnet.model.outputs_probabilities` is False) gets a softmax."""
    _, x = model_inputs(images, preprocess)
    (y,) = _run(model, x, batch_size)
    return probabilities(y.astype(np.float64), not outputs_probabilities(model)).numpy()


def top5(model, images, class_names, k=5, preprocess=None, batch_size=32):
    """The model's top-``k`` predictions for each image (inference mode).

    Returns:
        a list, one per image, of ``k`` pairs ``(class name, probability)``, most
        probable first. ``class_names=None`` names classes by index.
    """
    return top_k(predict_probs(model, images, preprocess, batch_size), class_names, k)


def fc7_features(model, images, batch_size=32, preprocess=None):
    """The fc7 activations after their ReLU ("the last, 4096-dimensional hidden layer",
    docs/paper.md §6.1), in inference mode: dropout (drop7 comes after fc7) is off.

    Returns:
        float32 array ``(n, fc_units)``.
    """
    _, x = model_inputs(images, preprocess)
    extractor = keras.Model(model.input, model.get_layer("fc7").output)
    (feats,) = _run(extractor, x, batch_size)
    return feats
