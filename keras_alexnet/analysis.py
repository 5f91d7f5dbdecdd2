"""What the figures compute, in NumPy: per-kernel scaling and tiling for display, the
colour specificity of kernels (Fig. 3), nearest neighbours (Fig. 4), the curves of a
run's ``metrics.csv``, and an even pick of files.

Nothing here runs a model (`keras_alexnet.activations` does) or draws
(`keras_alexnet.figures` does); each function is tested on its own.
"""

import math

import numpy as np

# Expected colour specificity of a kernel with i.i.d. weights (an untrained one): the
# chromatic plane holds 2 of the 3 colour dimensions, so 2/3 of the energy on average.
RANDOM_COLOUR_SPECIFICITY = 2.0 / 3.0


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
    Fig. 4 compares fc7 vectors this way, docs/paper.md §6.1). Ties go to the lower base index.

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


def spread(files, n):
    """At most ``n`` of ``files``, evenly spaced (so every class of a sorted class-per-
    directory tree is represented)."""
    files = list(files)
    if len(files) <= n:
        return files
    return [files[i] for i in np.unique(np.linspace(0, len(files) - 1, n).round().astype(int))]


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
