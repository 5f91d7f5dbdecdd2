"""Figures of a trained AlexNet: the paper's Fig. 3 and Fig. 4, activations, training curves.

- Fig. 3 (docs/paper.md §6.1): the 96 conv1 kernels, tower a (the paper's GPU 1, top 48)
  above tower b (GPU 2, bottom 48): `plot_conv1_filters`. The paper observes that tower
  a's kernels are "largely color-agnostic" and tower b's "largely color-specific";
  `keras_alexnet.analysis.colour_specificity` puts a number on that and
  `plot_colour_specificity` draws it.
- The feature maps of every conv layer for one image, per tower: `plot_activations`.
- Fig. 4 (docs/paper.md §6.1): top-5 predictions (`plot_predictions`) and the training
  images nearest to a query by Euclidean distance of the fc7 activations, "the last,
  4096-dimensional hidden layer" (`keras_alexnet.activations.fc7_features`,
  `keras_alexnet.analysis.nearest_neighbours`, `plot_neighbours`).
- Training curves from a run's ``metrics.csv``: `plot_training_curves`;
  `record_training_curves` draws them into a run directory at the end of training.

What is drawn is computed in `keras_alexnet.analysis` (NumPy) and
`keras_alexnet.activations` (the model); the ``plot_*`` functions return a
`matplotlib.figure.Figure` and write a PNG when given a ``path``. Figures are made with
`matplotlib.figure.Figure` directly, never through `matplotlib.pyplot`, so nothing needs
a display (PNGs are rendered by the Agg canvas) and no global figure list fills up; in a
notebook a returned figure shows as the cell's value. Images given with a ``preprocess``
callable are drawn as they are (RGB in ``[0, 255]``), without one min-max scaled (see
`keras_alexnet.activations`).
"""

import math
from pathlib import Path

import numpy as np
import matplotlib
import matplotlib.ticker
from matplotlib.figure import Figure

from keras_alexnet import run_files
from keras_alexnet.activations import CONV_NAMES, conv1_kernels, feature_maps, model_inputs, model_layout, top5
from keras_alexnet.analysis import (
    RANDOM_COLOUR_SPECIFICITY,
    colour_specificity,
    normalise_per_kernel,
    tile,
    to_display,
    training_series,
)

DPI = 100


# The training curves of a run: RUN/figures/<this>, drawn at the end of train.py and by
# `python -m keras_alexnet.visualize`.
CURVES_FILE = "training_curves.png"

def _tower_labels(layout, n):
    half = n // 2
    if layout == "none":  # one tower: the halves are only halves
        return (f"kernels 1-{half} (one tower)", f"kernels {half + 1}-{n} (one tower)")
    return ("tower a (GPU 1)", "tower b (GPU 2)")


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
    shown, fed = model_inputs(image, preprocess)
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
    shown, _ = model_inputs(images, None)
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


def plot_training_curves(metrics, path=None, title="Training curves"):
    """Loss, top-1 and top-5 error and learning rate by epoch, train solid and
    validation dashed, from metrics columns (`keras_alexnet.run_files.read_metrics`, or a
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


def record_training_curves(run_dir):
    """Draws a run's training curves into ``figures/training_curves.png`` (for
    `keras_alexnet.training.train`'s ``after_run``): ``{"curves": path}``, with None for
    the path when they cannot be drawn (said, never fatal: the models are saved)."""
    path = Path(run_dir) / run_files.FIGURES_DIR / CURVES_FILE
    try:
        plot_training_curves(run_files.read_metrics(run_dir), path, title=f"Training curves: {run_dir}")
    except (OSError, ValueError) as e:
        print(f"Could not draw the training curves into {path}: {e}")
        return {"curves": None}
    return {"curves": str(path)}
