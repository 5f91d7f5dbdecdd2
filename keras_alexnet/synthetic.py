"""A small dataset the package draws itself: the built-in default of `train.py`.

Procedurally drawn photos-in-miniature of a few shape classes (disc, square, triangle,
ring, cross, stripes, ...), each with a random colour, size, position and rotation over a
noisy textured background, written as an ImageNet-style folder of JPEGs
(``DIR/train/<class>/*.JPEG``, ``DIR/val/<class>/*.JPEG``) so that the real input
pipeline, decoding included, runs on it. It needs no download and is the same on every
machine for the same seed.
"""

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("disc", "square", "triangle", "ring", "cross", "stripes", "star", "checker")
VERSION = 2  # in manifest.json; raised whenever draw_image changes, so cached copies are redrawn
BACKGROUND_SPREAD = 40  # +- per channel around the background colour, on a 4x4 grid: smooth, no clutter
MIN_CONTRAST = 150  # |shape colour - background mean under it|, summed over R, G, B
# The built-in dataset: drawn at the tiny preset's resize size, an epoch of 200 steps at
# its batch size of 16.
TRAIN_PER_CLASS, VAL_PER_CLASS, SIZE = 400, 50, 76


def _polygon(cx, cy, r, n, angle, star=False):
    points = []
    steps = 2 * n if star else n
    for i in range(steps):
        radius = r if (not star or i % 2 == 0) else r * 0.45
        t = angle + 2 * math.pi * i / steps
        points.append((cx + radius * math.cos(t), cy + radius * math.sin(t)))
    return points


def draw_image(label, rng, size=SIZE):
    """Draws one image of class ``CLASSES[label]`` as an RGB `PIL.Image`."""
    # A smooth random background: a random colour with low-resolution variations of up
    # to +-BACKGROUND_SPREAD per channel, scaled up, plus pixel noise.
    base = rng.uniform(40, 215, size=3)
    low = np.clip(base + rng.uniform(-BACKGROUND_SPREAD, BACKGROUND_SPREAD, (4, 4, 3)), 0, 255).astype(np.uint8)
    background = Image.fromarray(low).resize((size, size), Image.BICUBIC)
    image = background.copy()
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.2, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    # A colour that stands out from the background under the shape: at least
    # MIN_CONTRAST apart (sum over R, G, B) from the background's mean there.
    x0, x1 = int(max(0, cx - r)), int(min(size, cx + r)) + 1
    y0, y1 = int(max(0, cy - r)), int(min(size, cy + r)) + 1
    under = np.asarray(background, dtype=np.float32)[y0:y1, x0:x1].reshape(-1, 3).mean(0)
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - under).sum() >= MIN_CONTRAST:
            break
    colour = tuple(int(c) for c in colour)
    angle = rng.uniform(0, 2 * math.pi)
    name = CLASSES[label]
    w = max(2, int(r * 0.35))
    if name == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, r, 4, angle), fill=colour)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, angle), fill=colour)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=w)
    elif name == "cross":
        for t in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(t), r * math.sin(t)
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=colour, width=w)
    elif name == "stripes":
        period = rng.uniform(0.12, 0.25) * size
        dx, dy = math.cos(angle), math.sin(angle)
        for k in range(-8, 9):
            ox, oy = cx + k * period * -dy, cy + k * period * dx
            draw.line([ox - 2 * size * dx, oy - 2 * size * dy, ox + 2 * size * dx, oy + 2 * size * dy],
                      fill=colour, width=max(2, int(period / 2.5)))
    elif name == "star":
        draw.polygon(_polygon(cx, cy, r, 5, angle, star=True), fill=colour)
    elif name == "checker":
        cell = max(3, int(rng.uniform(0.08, 0.15) * size))
        x0, y0 = int(cx - r), int(cy - r)
        for i in range(int(2 * r / cell) + 1):
            for j in range(int(2 * r / cell) + 1):
                if (i + j) % 2 == 0:
                    draw.rectangle([x0 + i * cell, y0 + j * cell, x0 + (i + 1) * cell, y0 + (j + 1) * cell], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_dataset(root, num_classes=8, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, size=SIZE, seed=0):
    """Writes the synthetic dataset to ``root`` (once) and returns ``root``.

    A ``manifest.json`` records the arguments; an existing folder made with the same
    arguments is reused, so repeated runs start at once.

    Args:
        root: folder to write ``train/`` and ``val/`` into.
        num_classes: how many of `CLASSES` to use (2 to 8).
        train_per_class, val_per_class: images per class and split.
        size: side of the square images in pixels.
        seed: seed of the drawing.

    Returns:
        The `pathlib.Path` of ``root``.
    """
    if not 2 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be between 2 and {len(CLASSES)}, got {num_classes}.")
    root = Path(root)
    manifest = dict(version=VERSION, num_classes=num_classes, train_per_class=train_per_class,
                    val_per_class=val_per_class, size=size, seed=seed)
    if _manifest(root) == manifest:
        return root
    # Drawn into a private folder and renamed into place: a process that finds the manifest
    # finds every image whole, while others (a second train.py, a parallel test) draw too.
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{root.name}-", dir=root.parent))
    try:
        rng = np.random.default_rng(seed)
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            for label in range(num_classes):
                folder = tmp / split / CLASSES[label]
                folder.mkdir(parents=True)
                for i in range(count):
                    draw_image(label, rng, size).save(folder / f"{CLASSES[label]}_{i:05d}.JPEG", quality=90)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if _manifest(root) != manifest:  # another process may have finished first
            if root.exists():
                shutil.rmtree(root)  # a dataset of other arguments, or a half-drawn old one
            os.replace(tmp, root)
    except OSError:
        if _manifest(root) != manifest:
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _manifest(root):
    try:
        return json.loads((Path(root) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


CACHE_ENV = "KERAS_ALEXNET_CACHE"  # where the built-in dataset (and the notebooks' run) go


def cache_dir():
    """``$KERAS_ALEXNET_CACHE``, else ``~/.cache/keras_alexnet``."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "keras_alexnet")).expanduser()


def default_dataset():
    """The built-in dataset, drawn once into ``cache_dir() / "synthetic"``: its path."""
    return make_dataset(cache_dir() / "synthetic")
