"""How an image becomes what a network takes: one home for every preprocessing decision.

- **Sizes** (docs/paper.md §2, §4.1): the shorter side resized to ``resize_size``
  (256) and the central square kept (`keras_alexnet.images.load_image`), crops of
  ``crop_size`` (227) from it; `default_resize_size` keeps the paper's proportion for
  other crop sizes.
- **Crops**: `random_crop_and_flip` (training), `center_crop`, `ten_crops` (the paper's
  test-time views), each subtracting a mean image cropped at the same window.
- **The mean** (`MEAN_MODES`): ``"image"`` (the training set's mean image, §2),
  ``"channel"`` (its per-channel mean) or ``"none"``. A run trained here subtracts
  `TRAINED_MEAN` unless its recipe says otherwise; a converted network subtracts what
  its preprocessing block names, `CONVERTED_MEAN` when it names nothing. A mean image
  is resized to the square in one place, `resize_mean`.
- **Std and channel order** (`normalize`): a converted network's own input (torchvision
  divides by the ImageNet std, Caffe takes BGR).
- `Preprocessing`: all of the above for one model, resolved once
  (`keras_alexnet.runs.open_run`), used by evaluation, the figures, export and
  `keras_alexnet.applications.preprocess_input`.

The functions are pure TF and work eagerly and inside `tf.data.Dataset.map`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_alexnet import recipes
from keras_alexnet.images import load_image

# The paper's sizes, the recipe's defaults: the shorter side rescaled to 256 and the central
# 256x256 patch kept (docs/paper.md §2); 227x227 crops (§3.5: the paper says 224, but only
# 227 gives conv1's 11x11/4 kernels the 55x55 maps it reports).
RESIZE_SIZE = recipes.Recipe.resize_size
CROP_SIZE = recipes.Recipe.crop_size

MEAN_MODES = ("image", "channel", "none")
# What a run trained here subtracts unless told otherwise: its recipe's default, the mean
# image (docs/paper.md §2), also for a config.json that names no mean.
TRAINED_MEAN = recipes.Recipe.mean
# A converted network carries its own preprocessing; one that names no mean has none.
CONVERTED_MEAN = "none"
CHANNEL_ORDERS = ("RGB", "BGR")
CROPS = ("center", "ten")


def default_resize_size(crop_size):
    """The paper's 256 for its 227 crops (§2), the same proportion for other crop sizes."""
    return int(round(crop_size * RESIZE_SIZE / CROP_SIZE))


def check_mean_mode(mode):
    """Raises `ValueError` unless ``mode`` is one of `MEAN_MODES`."""
    if mode not in MEAN_MODES:
        raise ValueError(f"mean must be one of {MEAN_MODES}, got {mode!r}.")
    return mode


def check_sizes(crop_size, resize_size):
    if not 0 < crop_size <= resize_size:
        raise ValueError(
            f"crop_size must be in (0, resize_size={resize_size}], got {crop_size}."
        )


def select_mean(stats, mean):
    """The mean array to subtract: ``"image"``, ``"channel"`` or ``"none"`` of ``stats``
    (a `keras_alexnet.stats.DatasetStats`), or ``mean`` itself when it is an array.
    ``mean=None``: `TRAINED_MEAN` with stats, else none."""
    if mean is not None and not isinstance(mean, str):
        return np.asarray(mean, np.float32)
    if mean is None:
        mean = TRAINED_MEAN if stats is not None else "none"
    check_mean_mode(mean)
    if mean == "none":
        return None
    if stats is None:
        raise ValueError(f"mean={mean!r} needs stats (keras_alexnet.stats.load_stats).")
    return stats.mean_image if mean == "image" else stats.channel_mean


def resize_mean(mean, resize_size):
    """float32 numpy mean for a square of ``resize_size``: None, a ``(3,)`` channel mean
    as it is, or an ``(S, S, 3)`` mean image resized (antialiased) when ``S`` differs."""
    if mean is None:
        return None
    mean = np.asarray(mean, np.float32)
    if mean.shape == (3,):
        return mean
    if mean.ndim != 3 or mean.shape[2] != 3 or mean.shape[0] != mean.shape[1]:
        raise ValueError(f"mean must be None, (3,) or (S, S, 3); got shape {mean.shape}.")
    if mean.shape[0] != resize_size:
        mean = tf.image.resize(mean, [resize_size, resize_size], antialias=True).numpy()
    return mean


def normalize(crops, std=None, channel_order="RGB"):
    """The last steps from a mean-subtracted RGB crop to a network's input: divided by
    ``std`` (per channel, in RGB order and pixel units; None: 1) and put in the network's
    ``channel_order`` (``"BGR"`` for Caffe's networks). Works on any ``(..., 3)`` tensor.
    """
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}.")
    if std is not None:
        crops = crops / tf.constant(np.asarray(std, np.float32))
    if channel_order == "BGR":
        crops = tf.reverse(crops, axis=[-1])
    return crops


# ---------------------------------------------------------------------------------------
# Crops (docs/paper.md §4.1)


def _crop_at(image, top, left, size):
    crop = tf.slice(image, tf.stack([top, left, 0]), [size, size, 3])
    crop.set_shape([size, size, 3])
    return crop


def _subtract_mean(crop, mean, top, left, size):
    """Subtracts a mean image cropped at the same window, or a per-channel mean."""
    if mean is None:
        return crop
    if mean.shape.rank == 3:
        return crop - _crop_at(mean, top, left, size)
    return crop - mean


def random_crop_and_flip(image, seed, crop_size=CROP_SIZE, mean=None):
    """One training view (§4.1): a random crop, mean subtracted, then maybe mirrored.

    The crop offsets are uniform over all positions inside ``image`` and the flip has
    probability 1/2; both are drawn statelessly from ``seed``, so a seed gives one view.
    A mean image is cropped at the same window as the image before subtraction.

    Args:
        image: float32 ``(size, size, 3)`` image.
        seed: int32/int64 tensor of shape ``(2,)`` (a stateless RNG seed).
        crop_size: side of the crop.
        mean: None, a float32 ``(size, size, 3)`` mean image, or a ``(3,)`` channel mean.

    Returns:
        float32 ``(crop_size, crop_size, 3)`` tensor.
    """
    offset_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(image)
    top_left = tf.random.stateless_uniform(
        [2], offset_seed, minval=0, maxval=tf.int32.max, dtype=tf.int32
    ) % (shape[:2] - crop_size + 1)
    top, left = top_left[0], top_left[1]
    crop = _subtract_mean(_crop_at(image, top, left, crop_size), mean, top, left, crop_size)
    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    return tf.cond(flip, lambda: tf.reverse(crop, axis=[1]), lambda: crop)


def center_crop(image, crop_size=CROP_SIZE, mean=None):
    """The centre crop (offsets rounded down), mean subtracted at the same window.

    Args:
        image: float32 ``(size, size, 3)`` image.
        crop_size: side of the crop.
        mean: None, a ``(size, size, 3)`` mean image, or a ``(3,)`` channel mean.

    Returns:
        float32 ``(crop_size, crop_size, 3)`` tensor.
    """
    shape = tf.shape(image)
    top, left = (shape[0] - crop_size) // 2, (shape[1] - crop_size) // 2
    return _subtract_mean(_crop_at(image, top, left, crop_size), mean, top, left, crop_size)


def ten_crop_offsets(image_size, crop_size=CROP_SIZE):
    """``(top, left)`` of the paper's five crop windows, in `ten_crops` order.

    Args:
        image_size: side of the square image.
        crop_size: side of the crop.

    Returns:
        List of 5 ``(top, left)`` int pairs: top-left, top-right, bottom-left,
        bottom-right, centre.
    """
    far = image_size - crop_size
    centre = far // 2
    return [(0, 0), (0, far), (far, 0), (far, far), (centre, centre)]


def ten_crops(image, crop_size=CROP_SIZE, mean=None):
    """The paper's test-time views (§4.1): 5 crops and their horizontal reflections.

    Args:
        image: float32 ``(size, size, 3)`` image with a static ``size``.
        crop_size: side of the crops.
        mean: None, a ``(size, size, 3)`` mean image, or a ``(3,)`` channel mean.

    Returns:
        float32 ``(10, crop_size, crop_size, 3)``: top-left, top-right, bottom-left,
        bottom-right, centre, then the same five mirrored left-right.
    """
    size = image.shape[0]
    crops = tf.stack(
        [
            _subtract_mean(_crop_at(image, t, l, crop_size), mean, t, l, crop_size)
            for t, l in ten_crop_offsets(size, crop_size)
        ]
    )
    return tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)


def network_views(square, crops, crop_size, mean=None, std=None, channel_order="RGB"):
    """The network input of a resized square: its centre crop ``(c, c, 3)`` or its ten
    crops ``(10, c, c, 3)``, minus the mean (cropped at the same windows), `normalize` d.

    Args:
        square: float32 ``(S, S, 3)`` RGB in ``[0, 255]`` (`keras_alexnet.images.load_image`).
        crops: ``"center"`` or ``"ten"``.
        crop_size: side of the crops.
        mean: None, or a float32 tensor ``(S, S, 3)`` or ``(3,)`` (`resize_mean`).
        std, channel_order: see `normalize`.
    """
    if crops not in CROPS:
        raise ValueError(f"crops must be one of {CROPS}, got {crops!r}.")
    views = ten_crops if crops == "ten" else center_crop
    return normalize(views(square, crop_size, mean), std, channel_order)


# ---------------------------------------------------------------------------------------
# One model's preprocessing


@dataclasses.dataclass(eq=False)
class Preprocessing:
    """How an image becomes what a model was trained (or converted) to take.

    An image is decoded to RGB, its shorter side resized to ``resize_size`` and its
    central square kept (§2); the crops of ``crop_size`` are taken from that square
    (centre or ten crops, §4.1); from each RGB crop ``x`` in ``[0, 255]`` the network
    gets ``channel_order((x - mean) / std)``, the mean image cropped at the same window.
    Any input scale inside the model (its ``input_scale`` layer) comes after this.

    Attributes:
        crop_size: side of the crops (the model's input size).
        resize_size: side of the central square.
        mean_mode: one of `MEAN_MODES`.
        mean: float32 RGB mean in pixel units, ``(resize_size, resize_size, 3)`` or
            ``(3,)``, or None (resized by `resize_mean`).
        std: float32 ``(3,)`` RGB divisor in pixel units, or None (1).
        channel_order: ``"RGB"`` or ``"BGR"`` (what the network takes).
        source: where these come from, in words (shown by the tools).
        stats_path: the statistics file the mean came from, or None.

    Raises:
        ValueError: an unknown mean mode or channel order, crops larger than the square.
    """

    crop_size: int
    resize_size: int
    mean_mode: str = "none"
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    channel_order: str = "RGB"
    source: str = ""
    stats_path: Path | None = None

    def __post_init__(self):
        where = f" ({self.source})" if self.source else ""
        check_mean_mode(self.mean_mode)
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}{where}.")
        if not 0 < self.crop_size <= self.resize_size:
            raise ValueError(f"resize size {self.resize_size} is smaller than the crops "
                             f"{self.crop_size}x{self.crop_size}{where}.")
        self.mean = resize_mean(self.mean, self.resize_size)
        if self.std is not None:
            self.std = np.asarray(self.std, np.float32)

    def views(self, square, crops="center"):
        """`network_views` of a resized square with this preprocessing (a TF function)."""
        mean = None if self.mean is None else tf.constant(self.mean)
        return network_views(square, crops, self.crop_size, mean, self.std, self.channel_order)

    def load(self, paths):
        """The centre crops of image files as RGB ``[0, 255]`` float32 ``(n, c, c, 3)``:
        what is drawn (`network_input` makes what the model gets). Decoded and resized by
        `keras_alexnet.images.load_image`, as in evaluation."""
        return np.stack([
            center_crop(load_image(str(p), self.resize_size), self.crop_size).numpy()
            for p in paths
        ]).astype(np.float32)

    def network_input(self, crops):
        """What the model gets for RGB ``[0, 255]`` centre crops ``(..., c, c, 3)`` (from
        `load`): the mean (cropped at the centre window), the std and the channel order
        applied, the ops of `views`. A numpy (or list) input gives a numpy array, a tensor
        a tensor (also inside `tf.function` and `tf.data`)."""
        is_tensor = tf.is_tensor(crops)
        x = tf.cast(crops, tf.float32) if is_tensor else tf.constant(np.asarray(crops, np.float32))
        if self.mean is not None:
            mean = tf.constant(self.mean)
            if mean.shape.rank == 3:
                mean = center_crop(mean, self.crop_size)
            x = x - mean
        y = normalize(x, self.std, self.channel_order)
        return y if is_tensor else y.numpy()

    def to_json(self):
        """JSON-ready description (the mean as where it came from, not its values)."""
        return {
            "crop_size": self.crop_size, "resize_size": self.resize_size,
            "mean": self.mean_mode,
            "mean_rgb": self.mean.tolist() if self.mean is not None and self.mean.ndim == 1 else None,
            "std_rgb": self.std.tolist() if self.std is not None else None,
            "channel_order": self.channel_order, "source": self.source,
            "stats": str(self.stats_path) if self.stats_path else None,
        }
