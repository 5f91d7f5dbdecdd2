"""Figures of a trained AlexNet: the paper's Fig. 3 and Fig. 4, activations, training curves.

- Fig. 3 (paper §6.1): the 96 conv1 kernels, tower a (the paper's GPU 1, top 48) above
  tower b (GPU 2, bottom 48): `plot_conv1_filters`. The paper observes that tower a's
  kernels are "largely color-agnostic" and tower b's "largely color-specific";
  `colour_specificity` puts a number on that and `plot_colour_specificity` draws it.
- The feature maps of every conv layer for one image, per tower: `plot_activations`.
- Fig. 4 (paper §6.1): top-5 predictions (`plot_predictions`) and the training images
  nearest to a query by Euclidean distance of the fc7 activations, "the last, 4096-
  dimensional hidden layer" (`fc7_features`, `nearest_neighbours`, `plot_neighbours`).
- Training curves from a run's ``metrics.csv``: `plot_training_curves`.

Every computation has a small NumPy core that is tested on its own (`conv1_kernels`,
`normalise_per_kernel`, `tile`, `colour_specificity`, `top_k`, `nearest_neighbours`,
`read_metrics`, `training_series`); the ``plot_*`` functions draw its result. They
return a `matplotlib.figure.Figure` and write a PNG when given a ``path``. Figures are
made with `matplotlib.figure.Figure` directly, never through `matplotlib.pyplot`, so
nothing needs a display (PNGs are rendered by the Agg canvas) and no global figure list
fills up; in a notebook a returned figure shows as the cell's value.

Images. What a model sees is an RGB crop in ``[0, 255]`` with the training mean
subtracted (paper §2), or a converted network's own input. Functions that run the model
take ``images`` plus an optional ``preprocess`` callable: with it, ``images`` are plain
RGB in ``[0, 255]`` (what is drawn) and ``preprocess(images)`` is what the model gets,
e.g. a run's ``run.preprocessing.network_input`` (`keras_alexnet.runs.Preprocessing`,
the same tensor the evaluation pipeline feeds); without it, ``images`` go to the model
as they are and are drawn min-max scaled.

Command (a run directory written by ``train.py``, or a model directory of
``keras_alexnet.convert``)::

    python -m keras_alexnet.visualize --run runs/RUN --out runs/RUN/figures \\
        --images ../shared/data/imagenet-sample/val \\
        --neighbours-from ../shared/data/imagenette/train --max-base 500
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import keras
import tensorflow as tf
import matplotlib
import matplotlib.ticker
from matplotlib.figure import Figure

from keras_alexnet.evaluation import top_k
from keras_alexnet.layers import GroupedConv2D, OnDevice
from keras_alexnet.model import outputs_probabilities

DPI = 100
CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
# Expected colour specificity of a kernel with i.i.d. weights (an untrained one): the
# chromatic plane holds 2 of the 3 colour dimensions, so 2/3 of the energy on average.
RANDOM_COLOUR_SPECIFICITY = 2.0 / 3.0
# What `main` writes, in order (the README shows these).
FIGURES = (
    "conv1_filters.png",
    "conv1_filters_change.png",
    "colour_specificity.png",
    "training_curves.png",
    "activations.png",
    "predictions.png",
    "neighbours.png",
)


# ---------------------------------------------------------------------------------------
# Model structure


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


def _tower_labels(layout, n):
    half = n // 2
    if layout == "none":  # one tower: the halves are only halves
        return (f"kernels 1-{half} (one tower)", f"kernels {half + 1}-{n} (one tower)")
    return ("tower a (GPU 1)", "tower b (GPU 2)")


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


# ---------------------------------------------------------------------------------------
# NumPy cores


def normalise_per_kernel(kernels):
    """Min-max scales each kernel on its own to ``[0, 1]`` for display.

    Args:
        kernels: array ``(n, ...)``. A constant kernel becomes 0.5 everywhere.

    Returns:
        float32 array of the same shape.
    """
    k = np.asarray(kernels, dtype=np.float64)
    axes = tuple(range(1, k.ndim))
    lo = k.min(axis=axes, keepdims=True)
    span = k.max(axis=axes, keepdims=True) - lo
    out = np.where(span > 0, (k - lo) / np.where(span > 0, span, 1.0), 0.5)
    return out.astype(np.float32)


def tile(images, cols, pad=1, pad_value=1.0):
    """Lays ``n`` equal-sized images out in a grid, row by row.

    Args:
        images: array ``(n, h, w)`` or ``(n, h, w, c)``.
        cols: images per row; ``ceil(n / cols)`` rows.
        pad: pixels between neighbouring images.
        pad_value: value of the padding and of empty cells (e.g. 1.0 for white, or
            ``np.nan`` to draw it in a colour map's "bad" colour).

    Returns:
        array ``(rows * (h + pad) - pad, cols * (w + pad) - pad[, c])``, float32.
    """
    images = np.asarray(images, dtype=np.float32)
    n, h, w = images.shape[:3]
    rows = max(1, math.ceil(n / cols))
    out = np.full(
        (rows * (h + pad) - pad, cols * (w + pad) - pad) + images.shape[3:],
        pad_value,
        dtype=np.float32,
    )
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = images[i]
    return out


def colour_specificity(kernels):
    """The fraction of each kernel's energy that is not grey.

    Each pixel ``x`` of a kernel ``k`` (``h x w x 3``) is an RGB vector; split it into its
    component along the grey axis ``(1, 1, 1) / sqrt(3)`` and the rest. With the grey
    image ``g(x) = (k_R(x) + k_G(x) + k_B(x)) / 3``:

        colour_specificity(k) = ||k - g||^2 / ||k||^2 = 1 - 3 ||g||^2 / ||k||^2

    (sums of squares over all pixels and channels; ``k - g`` subtracts ``g`` from each
    channel). The two parts are orthogonal, so the value lies in ``[0, 1]``:

    - 0: a colour-agnostic kernel, the same pattern in R, G and B (a grey kernel);
    - 2/3: a kernel on one channel only; also the expected value for i.i.d. random
      weights (`RANDOM_COLOUR_SPECIFICITY`), i.e. an untrained layer;
    - 1: a purely chromatic (colour-opponent) kernel, R + G + B = 0 at every pixel,
      e.g. red against green.

    Why this measure: it is scale-invariant, has a closed-form random baseline, and it
    counts uniform colour blobs (common among the paper's colour-specific kernels) as
    colour: the spatial mean is not removed. The grey axis weighs R, G and B equally,
    as the model's inputs do. An all-zero kernel gets 0.

    Args:
        kernels: array ``(..., h, w, 3)``, e.g. `conv1_kernels` ``(96, 11, 11, 3)``.

    Returns:
        float64 array of shape ``kernels.shape[:-3]``.
    """
    k = np.asarray(kernels, dtype=np.float64)
    if k.ndim < 3 or k.shape[-1] != 3:
        raise ValueError(f"kernels must have shape (..., h, w, 3), got {k.shape}.")
    grey = k.mean(axis=-1, keepdims=True)
    total = np.sum(k**2, axis=(-3, -2, -1))
    chroma = np.sum((k - grey) ** 2, axis=(-3, -2, -1))
    return np.divide(chroma, total, out=np.zeros_like(total), where=total > 0)


def nearest_neighbours(query_feats, base_feats, k=6, return_distances=False):
    """Indices of the ``k`` base vectors nearest to each query, by Euclidean distance.

    Squared distances are ``||q||^2 + ||b||^2 - 2 q.b`` computed in float64 (the paper's
    Fig. 4 compares fc7 vectors this way, §6.1). Ties go to the lower base index.

    Args:
        query_feats: array ``(q, d)`` (or ``(d,)`` for one query).
        base_feats: array ``(n, d)``.
        k: neighbours per query, at most ``n``.
        return_distances: also return the distances.

    Returns:
        int array ``(q, k)`` of indices into ``base_feats``, nearest first; with
        ``return_distances`` also a float array ``(q, k)`` of the distances.
    """
    q = np.asarray(query_feats, dtype=np.float64)
    q = q.reshape(1, -1) if q.ndim == 1 else q.reshape(len(q), -1)
    b = np.asarray(base_feats, dtype=np.float64)
    b = b.reshape(len(b), -1)
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"query dimension {q.shape[1]} != base dimension {b.shape[1]}.")
    if not 1 <= k <= len(b):
        raise ValueError(f"k must be between 1 and the {len(b)} base vectors, got {k}.")
    d2 = np.sum(q**2, axis=1)[:, None] + np.sum(b**2, axis=1)[None, :] - 2.0 * q @ b.T
    d2 = np.maximum(d2, 0.0)
    idx = np.argsort(d2, axis=1, kind="stable")[:, :k]
    if return_distances:
        return idx, np.sqrt(np.take_along_axis(d2, idx, axis=1))
    return idx


# ---------------------------------------------------------------------------------------
# Images


def to_display(image):
    """An image as RGB floats in ``[0, 1]`` for `imshow`.

    uint8 images and images with values in ``[0, 255]`` are divided by 255, images in
    ``[0, 1]`` are kept, anything else (e.g. mean-subtracted) is min-max scaled. A
    single-channel image is repeated to RGB.
    """
    x = np.asarray(image)
    is_uint8 = x.dtype == np.uint8
    x = x.astype(np.float32)
    if x.ndim == 2:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    lo, hi = float(x.min()), float(x.max())
    if is_uint8 or (lo >= 0 and 1 < hi <= 255):
        return np.clip(x / 255.0, 0, 1)
    if lo >= 0 and hi <= 1:
        return x
    return normalise_per_kernel(x[None])[0]


def _as_batch(images):
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"images must be (h, w, 3) or (n, h, w, 3), got shape {x.shape}.")
    return x


def _inputs(images, preprocess):
    """(what is drawn, what the model gets)."""
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


# ---------------------------------------------------------------------------------------
# Model outputs


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
    _, x = _inputs(image, preprocess)
    if len(x) != 1:
        raise ValueError(f"feature_maps takes one image, got {len(x)}.")
    layers = list(conv_layer_names(model) if layers is None else layers)
    extractor = keras.Model(model.input, [model.get_layer(n).output for n in layers])
    outs = _run(extractor, x)
    return {name: out[0] for name, out in zip(layers, outs)}


def predict_probs(model, images, preprocess=None, batch_size=32):
    """Class probabilities ``(n, classes)`` in inference mode; a logits head
    (`keras_alexnet.model.outputs_probabilities` is False) gets a softmax."""
    _, x = _inputs(images, preprocess)
    (y,) = _run(model, x, batch_size)
    y = y.astype(np.float64)
    if not outputs_probabilities(model):
        y = np.exp(y - y.max(axis=1, keepdims=True))
        y /= y.sum(axis=1, keepdims=True)
    return y


def top5(model, images, class_names, k=5, preprocess=None, batch_size=32):
    """The model's top-``k`` predictions for each image (inference mode).

    Returns:
        a list, one per image, of ``k`` pairs ``(class name, probability)``, most
        probable first. ``class_names=None`` names classes by index.
    """
    return top_k(predict_probs(model, images, preprocess, batch_size), class_names, k)


def fc7_features(model, images, batch_size=32, preprocess=None):
    """The fc7 activations after their ReLU ("the last, 4096-dimensional hidden layer",
    §6.1), in inference mode: dropout (drop7 comes after fc7) is off.

    Returns:
        float32 array ``(n, fc_units)``.
    """
    _, x = _inputs(images, preprocess)
    extractor = keras.Model(model.input, model.get_layer("fc7").output)
    (feats,) = _run(extractor, x, batch_size)
    return feats


# ---------------------------------------------------------------------------------------
# Figures


def save_figure(fig, path):
    """Writes ``fig`` as a PNG at ``DPI`` (size = figure inches x DPI); makes parent dirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _finish(fig, path):
    if path is not None:
        save_figure(fig, path)
    return fig


def _kernel_mosaic(kernels, cols):
    return tile(normalise_per_kernel(kernels), cols=cols, pad=1, pad_value=1.0)


def plot_conv1_filters(model, path=None, cols=12, initial=None):
    """The paper's Fig. 3: the 96 conv1 kernels, tower a's 48 above tower b's 48.

    Each 11x11x3 kernel is min-max scaled to ``[0, 1]`` on its own and drawn as an RGB
    image (nearest-neighbour magnified).

    Args:
        model: an AlexNet, any layout.
        path: optional PNG path.
        cols: kernels per row (12: four rows per tower).
        initial: optional model of the same layout holding the weights before training
            (e.g. `keras_alexnet.runs.Run.initial_model`): then each kernel's *change*
            (trained minus initial) is drawn. After a short run the kernels are still
            mostly their random start; the change shows what was learned.
    """
    layout = model_layout(model)
    kernels = conv1_kernels(model)
    if initial is not None:
        kernels = kernels - conv1_kernels(initial)
    n = len(kernels)
    half = n // 2
    labels = _tower_labels(layout, n)
    mosaics = [_kernel_mosaic(kernels[:half], cols), _kernel_mosaic(kernels[half:], cols)]
    h, w = mosaics[0].shape[:2]
    height = round(1.4 + 2 * 8 * h / w, 2)
    fig = Figure(figsize=(8, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 1)
    for ax, mosaic, label, start in zip(axes, mosaics, labels, (1, half + 1)):
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_title(f"{label}: kernels {start}-{start + half - 1}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_linewidth(2)
    size = "x".join(str(s) for s in kernels.shape[1:])
    if initial is None:
        fig.suptitle(f"conv1: {n} kernels of {size}, each scaled to [0, 1] on its own (Fig. 3)")
    else:
        fig.suptitle(f"conv1: {n} kernels minus their initial values, each scaled to [0, 1] (Fig. 3)")
    return _finish(fig, path)


def plot_colour_specificity(model, path=None):
    """Colour specificity of the conv1 kernels per tower (see `colour_specificity`):
    each tower's kernels as bars, sorted, with the tower mean and the untrained (i.i.d.
    weights) value 2/3."""
    layout = model_layout(model)
    spec = colour_specificity(conv1_kernels(model))
    n = len(spec)
    half = n // 2
    labels = _tower_labels(layout, n)
    fig = Figure(figsize=(9, 4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    colours = ("tab:gray", "tab:red")
    for t, (label, colour) in enumerate(zip(labels, colours)):
        values = np.sort(spec[t * half : (t + 1) * half])[::-1]
        x = np.arange(half) + t * (half + 2)
        mean = float(values.mean())
        ax.bar(x, values, width=0.85, color=colour, alpha=0.75, label=f"{label}: mean {mean:.2f}")
        ax.hlines(mean, x[0] - 0.5, x[-1] + 0.5, colors="black", linewidth=2)
        ax.text(x[-1] + 0.5, mean, f" {mean:.2f}", va="center", ha="left", fontsize=9)
    ax.axhline(
        RANDOM_COLOUR_SPECIFICITY, color="tab:blue", linestyle="--", linewidth=1,
        label="i.i.d. random weights (2/3)",
    )
    ax.set_xticks([(half - 1) / 2, half + 2 + (half - 1) / 2], labels)
    ax.set_xlim(-1, 2 * half + 4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("colour specificity\n1 - 3||grey||² / ||k||²")
    ax.set_title("conv1 kernels, sorted within each tower (0: grey, 1: purely chromatic)")
    ax.legend(loc="upper right", fontsize=8)
    return _finish(fig, path)


def _activation_blocks(model, maps):
    """Rows (paper layer, [(label, maps (H, W, C))]) of `plot_activations`: one block per
    tower; the grouped layout's channels split in halves; one block for one tower."""
    layout = model_layout(model)
    rows = []
    for name in CONV_NAMES:
        if layout == "towers":
            rows.append((name, [(f"{name}_{t}", maps[f"{name}_{t}"]) for t in "ab"]))
        elif layout == "grouped":
            a, b = np.split(maps[name], 2, axis=-1)
            rows.append((name, [(f"{name} tower a", a), (f"{name} tower b", b)]))
        else:
            rows.append((name, [(name, maps[name])]))
    return rows


def plot_activations(model, image, path=None, max_maps=16, cols=8, preprocess=None):
    """The feature maps of every conv layer for one image, per tower.

    One row per conv layer, one block per tower (tower a left, tower b right), each the
    first ``max_maps`` maps of that tower. Maps are ReLU outputs, drawn on one colour
    scale per layer, from 0 to the largest value shown in that layer, so the towers can
    be compared; padding is white. The input image is drawn on the left.

    Args:
        model: an AlexNet, any layout.
        image: one image (see the module docstring for ``preprocess``).
        path: optional PNG path.
        max_maps: maps per tower and layer.
        cols: maps per row within a block.
        preprocess: optional callable from the drawn image to the model input.
    """
    shown, fed = _inputs(image, preprocess)
    maps = feature_maps(model, fed[0])
    rows = _activation_blocks(model, maps)
    nblocks = max(len(blocks) for _, blocks in rows)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    fig = Figure(figsize=(3 + 5 * nblocks, 2.0 * len(rows) + 0.6), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(len(rows), 1 + nblocks, width_ratios=[0.6] + [1.0] * nblocks)
    ax = fig.add_subplot(grid[0:2, 0])
    ax.imshow(to_display(shown[0]))
    ax.set_title("input", fontsize=10)
    ax.axis("off")
    for r, (name, blocks) in enumerate(rows):
        shown_maps = [np.moveaxis(m[..., :max_maps], -1, 0) for _, m in blocks]
        vmax = max(float(np.max(m)) for m in shown_maps)
        vmax = vmax if vmax > 0 else 1.0
        for c, ((label, m), sm) in enumerate(zip(blocks, shown_maps)):
            ax = fig.add_subplot(grid[r, 1 + c])
            ax.imshow(
                tile(sm, cols=min(cols, len(sm)), pad=1, pad_value=np.nan),
                cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest",
            )
            h, w, ch = m.shape
            ax.set_title(f"{label}: {len(sm)} of {ch} maps, {h}x{w}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{name}\n0 - {vmax:.3g}", fontsize=9)
    fig.suptitle("Conv feature maps (ReLU outputs) per tower")
    return _finish(fig, path)


def _short(name, n=28):
    name = str(name).split(",")[0]
    return name if len(name) <= n else name[: n - 1] + "…"


def _draw_predictions(shown, predictions, labels=None, cols=4):
    n = len(shown)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.6 * cols, 4.2 * rows), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(2 * rows, cols, height_ratios=[1.6, 1.0] * rows)
    for i in range(n):
        r, c = divmod(i, cols)
        ax = fig.add_subplot(grid[2 * r, c])
        ax.imshow(to_display(shown[i]))
        ax.axis("off")
        if labels is not None and labels[i] is not None:
            ax.set_title(_short(labels[i]), fontsize=9)
        ax = fig.add_subplot(grid[2 * r + 1, c])
        names = [name for name, _ in predictions[i]]
        probs = [p for _, p in predictions[i]]
        y = np.arange(len(names))[::-1]
        truth = None if labels is None else labels[i]
        colours = ["tab:red" if name == truth else "tab:blue" for name in names]
        ax.barh(y, probs, color=colours, alpha=0.6, height=0.8)
        for yy, name, p in zip(y, names, probs):
            ax.text(0.02, yy, f"{_short(name, 22)}  {p:.2f}", va="center", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.6, len(names) - 0.4)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
    fig.suptitle(
        f"Top-{len(predictions[0])} predictions (Fig. 4, left)"
        + ("; red: the correct class" if labels is not None else "")
    )
    return fig


def plot_predictions(
    model, images, class_names, path=None, labels=None, k=5, preprocess=None, cols=4
):
    """The paper's Fig. 4 (left): each image above a bar chart of its top-``k`` classes.

    Args:
        model: an AlexNet.
        images: images ``(n, h, w, 3)`` (see the module docstring for ``preprocess``).
        class_names: the model's class names (None: class indices).
        path: optional PNG path.
        labels: optional correct class name per image: drawn as the title, and its bar
            in red when it is among the top ``k``.
        k: classes per image.
        preprocess: optional callable from the drawn images to the model inputs.
        cols: images per row.
    """
    shown, _ = _inputs(images, None)
    predictions = top5(model, images, class_names, k=k, preprocess=preprocess)
    return _finish(_draw_predictions(shown, predictions, labels, cols), path)


def plot_neighbours(query_images, base_images, indices, path=None, distances=None):
    """The paper's Fig. 4 (right): each query in the first column, its nearest base
    (training) images to its right, nearest first.

    Args:
        query_images: ``q`` images.
        base_images: the images ``indices`` point into (a sequence or array).
        indices: int array ``(q, k)``, e.g. from `nearest_neighbours`.
        path: optional PNG path.
        distances: optional ``(q, k)`` distances, written under each neighbour.
    """
    indices = np.asarray(indices)
    q, k = indices.shape
    fig = Figure(figsize=(1.6 * (k + 1) + 0.3, 1.75 * q + 0.5), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(q, k + 2, width_ratios=[1, 0.15] + [1] * k)
    for i in range(q):
        ax = fig.add_subplot(grid[i, 0])
        ax.imshow(to_display(query_images[i]))
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("tab:red")
            spine.set_linewidth(3)
        if i == 0:
            ax.set_title("query", fontsize=9)
        for j in range(k):
            ax = fig.add_subplot(grid[i, j + 2])
            ax.imshow(to_display(base_images[int(indices[i, j])]))
            ax.axis("off")
            if distances is not None:
                ax.set_title(f"d={float(distances[i, j]):.3g}", fontsize=7)
            elif i == 0:
                ax.set_title(f"#{j + 1}", fontsize=9)
    fig.suptitle(f"{k} nearest images by Euclidean distance of fc7 (Fig. 4, right)")
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------
# Training curves

# Column names accepted for each curve, errors first; accuracy columns become errors.
_ERROR_COLUMNS = {
    "top1": ("top1_error", "top_1_error", "top1_err", "error", "err"),
    "top5": ("top5_error", "top_5_error", "top5_err"),
}
_ACCURACY_COLUMNS = {
    "top1": (
        "top1_accuracy", "top_1_accuracy", "top1_acc", "accuracy", "acc",
        "sparse_categorical_accuracy", "categorical_accuracy",
    ),
    "top5": (
        "top5_accuracy", "top_5_accuracy", "top5_acc",
        "sparse_top_k_categorical_accuracy", "top_k_categorical_accuracy",
    ),
}


def _to_error(accuracy):
    # Fractions (<= 1) or percentages.
    return (1.0 if np.nanmax(accuracy) <= 1.0 else 100.0) - accuracy


def training_series(metrics):
    """The curves of `plot_training_curves` from `read_metrics` columns.

    Returns:
        dict with ``"epoch"`` (the ``epoch`` column, else 1, 2, ...) and, for each of
        ``"loss"``, ``"top1"``, ``"top5"`` present, a dict ``{"train": array or None,
        "val": array or None, "from_accuracy": bool}``, and ``"lr"`` (array) when
        present. Errors come from ``*_error`` columns, else from accuracy columns as
        ``1 - accuracy`` (``100 - accuracy`` for percentages).
    """
    n = max((len(v) for v in metrics.values()), default=0)
    series = {"epoch": metrics["epoch"] if "epoch" in metrics else np.arange(1, n + 1, dtype=float)}

    def find(names, prefix):
        for name in names:
            if prefix + name in metrics and not np.all(np.isnan(metrics[prefix + name])):
                return metrics[prefix + name]
        return None

    train, val = find(("loss",), ""), find(("loss",), "val_")
    if train is not None or val is not None:
        series["loss"] = {"train": train, "val": val, "from_accuracy": False}
    for key in ("top1", "top5"):
        curves, from_accuracy = {}, False
        for split, prefix in (("train", ""), ("val", "val_")):
            err = find(_ERROR_COLUMNS[key], prefix)
            if err is None:
                acc = find(_ACCURACY_COLUMNS[key], prefix)
                if acc is not None:
                    err, from_accuracy = _to_error(acc), True
            curves[split] = err
        if curves["train"] is not None or curves["val"] is not None:
            series[key] = dict(curves, from_accuracy=from_accuracy)
    lr = find(("lr", "learning_rate"), "")
    if lr is not None:
        series["lr"] = lr
    return series


def plot_training_curves(metrics, path=None, title="Training curves"):
    """Loss, top-1 and top-5 error and learning rate by epoch, train solid and
    validation dashed, from metrics columns (`keras_alexnet.runs.read_metrics`, or a
    run's ``run.metrics()``). Only the panels whose columns exist are drawn; the
    learning rate is on a log scale."""
    series = training_series(metrics)
    panels = [key for key in ("loss", "top1", "top5", "lr") if key in series]
    if not panels:
        raise ValueError(f"no loss, error, accuracy or lr columns in the metrics ({title})")
    epoch = series["epoch"]
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.4 * nrows), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    titles = {"loss": "loss", "top1": "top-1 error", "top5": "top-5 error"}
    for ax, key in zip(axes, panels):
        if key == "lr":
            lr = series["lr"]
            ax.plot(epoch, lr, color="black", marker=".", drawstyle="steps-post")
            if np.all(lr[~np.isnan(lr)] > 0):
                ax.set_yscale("log")
            ax.set_title("learning rate")
        else:
            s = series[key]
            for split, style in (("train", "-"), ("val", "--")):
                if s[split] is not None:
                    ax.plot(epoch, s[split], style, marker=".", label=split)
            ax.set_title(titles[key] + (" (1 - accuracy)" if s["from_accuracy"] else ""))
            ax.legend(fontsize=8)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------
# The command


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m keras_alexnet.visualize",
        description="Figures of a training run or a converted model: conv1 kernels (Fig. 3) "
        "and what training changed in them, colour specificity per tower, activations, "
        "top-5 predictions and fc7 nearest neighbours (Fig. 4), training curves.",
    )
    p.add_argument("--run", required=True, help="run directory of train.py, or a model directory of keras_alexnet.convert")
    p.add_argument("--out", help="output directory (default: RUN/figures)")
    p.add_argument("--images", nargs="+", default=[], help="image files or directories (query / test images)")
    p.add_argument("--neighbours-from", help="directory of base (training) images for the fc7 nearest neighbours")
    p.add_argument("--max-base", type=int, default=300, help="at most this many base images, evenly spread (default 300)")
    p.add_argument("--max-images", type=int, default=8, help="images in predictions.png (default 8)")
    p.add_argument("--max-queries", type=int, default=5, help="query rows in neighbours.png (default 5, as Fig. 4)")
    p.add_argument("--k", type=int, default=6, help="neighbours per query (default 6, as Fig. 4)")
    p.add_argument("--max-maps", type=int, default=16, help="feature maps per tower and layer (default 16)")
    p.add_argument("--batch-size", type=int, default=32)
    return p


def spread(files, n):
    """At most ``n`` of ``files``, evenly spaced (so every class of a sorted class-per-
    directory tree is represented)."""
    files = list(files)
    if len(files) <= n:
        return files
    return [files[i] for i in np.unique(np.linspace(0, len(files) - 1, n).round().astype(int))]


def main(argv=None):
    """The command; returns the list of files written. Raises
    `keras_alexnet.runs.RunError` (or a `keras_alexnet.data.DatasetError`) naming the
    path when the run, its model or an image path is missing."""
    from keras_alexnet import data, runs

    args = _parser().parse_args(argv)
    run = runs.open_run(args.run)
    out = Path(args.out) if args.out else run.figures_dir()
    images = data.list_images(args.images) if args.images else []
    base_files = data.list_images(args.neighbours_from) if args.neighbours_from else []
    out.mkdir(parents=True, exist_ok=True)
    model = run.model
    print(f"model: {run.model_path}")
    written = []

    def wrote(fig, name):
        written.append(save_figure(fig, out / name))
        print(f"wrote {out / name}")

    wrote(plot_conv1_filters(model), "conv1_filters.png")
    if run.recipe is not None:  # the recipe's seed rebuilds the weights before training
        wrote(plot_conv1_filters(model, initial=run.initial_model()), "conv1_filters_change.png")
    else:
        print(f"{run.path or run.model_path} was not trained by train.py (no recipe, no initial "
              "weights): skipping conv1_filters_change.png")
    wrote(plot_colour_specificity(model), "colour_specificity.png")

    metrics = run.metrics()
    if metrics is not None:
        wrote(plot_training_curves(metrics, title=f"Training curves: {run.path}"), "training_curves.png")
    else:
        print(f"no metrics.csv in {run.path or run.model_path.parent}: skipping training_curves.png")

    if images:
        pre = run.preprocessing
        print(f"preprocessing: {pre.source}; shorter side {pre.resize_size}, centre crop "
              f"{pre.crop_size}, mean {pre.mean_mode}, {pre.channel_order}")
        names = run.display_names()
        shown = pre.load(images[: max(args.max_images, args.max_queries)])

        wrote(plot_activations(model, shown[0], max_maps=args.max_maps, preprocess=pre.network_input),
              "activations.png")
        labels = [names[run.label(p)] if run.label(p) >= 0 else None for p in images[: args.max_images]]
        wrote(
            plot_predictions(model, shown[: args.max_images], names,
                             labels=labels if any(labels) else None, preprocess=pre.network_input),
            "predictions.png",
        )
        if base_files:
            base_files = spread(base_files, args.max_base)
            k = min(args.k, len(base_files))
            queries = shown[: args.max_queries]
            query_feats = fc7_features(model, queries, args.batch_size, pre.network_input)
            feats, thumbs = [], []
            for i in range(0, len(base_files), args.batch_size):
                batch = pre.load(base_files[i : i + args.batch_size])
                feats.append(fc7_features(model, batch, args.batch_size, pre.network_input))
                thumbs.append(batch.round().astype(np.uint8))
            idx, dist = nearest_neighbours(query_feats, np.concatenate(feats), k, return_distances=True)
            wrote(plot_neighbours(queries, np.concatenate(thumbs), idx, distances=dist), "neighbours.png")
            print(f"neighbours among {len(base_files)} images of {args.neighbours_from}")
        elif args.neighbours_from:
            print(f"no images under {args.neighbours_from}: skipping neighbours.png")
        else:
            print("no --neighbours-from: skipping neighbours.png")
    else:
        print("no --images: skipping activations.png, predictions.png, neighbours.png")
    return written


if __name__ == "__main__":
    from keras_alexnet import data as _data, runs as _runs

    try:
        main()
    except (_runs.RunError, _data.DatasetError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
