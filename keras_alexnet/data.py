"""The paper's input pipeline (§2, §4.1): where images come from, and how they become
the 227x227 crops the network sees.

Two steps, two halves of this module.

1. **Sources** list the data and fix the class index of every example:

   - `folder_source`: an ImageNet-style folder, ``DIR/train/<class>/*.JPEG`` and
     ``DIR/val/<class>/*.JPEG``, the flat ``DIR/val/ILSVRC2012_val_00000001.JPEG``
     layout (labelled from the 50,000 validation labels that ship inside
     tensorflow-datasets), or ``DIR`` itself being a folder of class subfolders.
   - `tfds_source`: a prepared tensorflow-datasets dataset by name (e.g. ``imagenette``),
     or ``imagenet2012`` prepared offline from the two manual tars. Nothing is ever
     downloaded.
   - `load_source` picks one of the two from command-line style arguments.

   All return a `Source`: file paths (folders), int labels, ``class_names``,
   ``num_classes`` and a `tf.data.Dataset` of ``(path or encoded bytes, label)``.

2. **Pipelines** turn a source into batches of float32 pixels in ``[0, 255]``:

   - `training_dataset`: shuffle (seeded), decode once, rescale the shorter side to 256
     and take the central 256x256 (§2), a random 227x227 crop and a random horizontal
     flip per image, subtract the training set's mean image cropped at the same window
     (§2, §4.1), batch, then the PCA colour augmentation layer (§4.1).
   - `evaluation_dataset`: the centre 227x227 crop, or the paper's ten crops (§4.1: four
     corners and the centre, and their horizontal reflections) as a ``(10, 227, 227, 3)``
     block per image.

   The per-image steps are small pure-TF functions (`decode_image`,
   `resize_shorter_side`, `central_crop`, `resize_central_square`, `load_image`,
   `random_crop_and_flip`, `center_crop`, `ten_crops`) that work eagerly and inside
   `tf.data.Dataset.map`.

How the class index is chosen (``class_index``):

- ``"imagenet"``: the index of the class's wnid in the standard 1000-class ILSVRC-2012
  order (tensorflow-datasets' ``datasets/imagenet2012/labels.txt``, the order of
  ``synset_words.txt``); ``num_classes`` is 1000 and ``class_names`` is the 1000 wnids.
  A model trained on a subset (e.g. Imagenette's 10 classes) still speaks ImageNet
  indices and can be evaluated on the full validation set.
- ``"compact"``: ``0 .. K-1`` over the K classes, in the order of ``class_names`` if
  given, else of the sorted folder names (for TFDS: the dataset's own label order);
  ``num_classes`` is K. Use it to train a 10-class model on Imagenette. When you
  evaluate such a model, pass the training source's ``class_names`` so the validation
  indices match even if a class folder is missing there.
- ``"auto"`` (default): ``"imagenet"`` when every class name is one of the 1000 ImageNet
  wnids, else ``"compact"``. A mix of wnid-like names (``n`` + 8 digits) and other names
  is an error, since either choice would probably be a silent mistake. With
  ``class_names`` given, ``"auto"`` means the order of that list (``"compact"``; it is
  ``"imagenet"`` exactly when the list is the 1000 wnids in the standard order).

Bad files (ImageNet's own training set has 22 CMYK JPEGs and a PNG named ``.JPEG``;
real folders hold truncated and zero-byte files): images are decoded by content with
`tf.io.decode_image`, so PNG/GIF/BMP content and grayscale or CMYK JPEGs become RGB.
Files that still cannot be decoded are dropped (``ignore_errors``) and counted by an
optional `SkipCounter`; `SkipReport` prints the count at the end of every epoch. Files
without an image extension are left out when the folder is listed and are listed in
``Source.non_image_files``. Structural problems (missing split, empty class folder,
unknown wnid, no images) raise a `DatasetError` naming the path before any training.

Images that would exhaust memory (decompression bombs: a small file whose header says
30,000 x 30,000 would decode into 2.7 GB) are refused before decoding: `image_size`
reads the size from the header (JPEG, PNG, GIF, BMP) and `decode_image` raises, like
for an undecodable file, when it exceeds `MAX_IMAGE_PIXELS`; in a pipeline the file is
dropped and counted by the `SkipCounter`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_alexnet.imagenet import WNID_PATTERN, imagenet_class_names, imagenet_validation_wnids
from keras_alexnet.layers import (
    IMAGENET_EIGENVALUES,
    IMAGENET_EIGENVECTORS,
    PCAColorAugmentation,
)

# Paper §2: "rescaled the image such that the shorter side was of length 256, and then
# cropped out the central 256x256 patch".
RESIZE_SIZE = 256
# Paper §4.1 says 224; 227 is what makes conv1's 11x11/4 kernels give 55x55 (REFERENCE.md).
CROP_SIZE = 227
# Paper §4.1: alpha_i ~ N(0, 0.1).
PCA_STDDEV = 0.1

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif")
SPLIT_ALIASES = {
    "train": ("train",),
    "val": ("val", "validation"),
    "test": ("test",),
}
FLAT_VAL_PATTERN = re.compile(r"^ILSVRC2012_val_(\d{8})\.[A-Za-z]+$")



class DatasetError(ValueError):
    """A data set that cannot be used as given (the message names the path)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A data directory, split or prepared TFDS dataset that does not exist."""


# ---------------------------------------------------------------------------------------
# Sources.


@dataclasses.dataclass(eq=False)
class Source:
    """A listed data set: every example with its class index, not yet decoded.

    Attributes:
        location: the split directory, or ``"tfds:<name>"`` for a TFDS dataset.
        split: the split name as requested (``"train"``, ``"val"``, ...).
        class_names: ``class_names[i]`` is the name (wnid or folder name) of class ``i``;
            its length is ``num_classes``.
        num_classes: the model's output size: 1000 for ``class_index="imagenet"``, else
            the number of classes (see the module docstring).
        class_index: ``"imagenet"`` or ``"compact"``, how indices were assigned.
        dataset: `tf.data.Dataset` of ``(string, int32 label)`` in listing order (sorted
            by class, then path) for folders, in TFDS's stored order for TFDS. The string
            is a file path if ``element == "path"``, encoded image bytes if ``"bytes"``.
        element: ``"path"`` or ``"bytes"``.
        num_examples: number of examples (image files, or TFDS records).
        paths: the image file paths (numpy object array of str), or None for TFDS.
        labels: int32 numpy array of class indices matching ``paths``, or None for TFDS.
        non_image_files: files left out when listing because their extension is not an
            image extension (``.DS_Store``, ``.txt``, ...).
    """

    location: str
    split: str
    class_names: tuple
    num_classes: int
    class_index: str
    dataset: tf.data.Dataset
    element: str
    num_examples: int
    paths: np.ndarray | None = None
    labels: np.ndarray | None = None
    non_image_files: tuple = ()


def _is_image_file(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(paths):
    """Image files named by ``paths`` (by `IMAGE_EXTENSIONS`): files as given,
    directories searched recursively (sorted).

    Raises:
        DatasetNotFoundError: a path that does not exist (named).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and _is_image_file(f.name)))
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetNotFoundError(f"No such image file or directory: {p}")
    return files


def default_resize_size(crop_size):
    """The paper's 256 for its 227 crops (§2), the same proportion for other crop sizes."""
    return int(round(crop_size * RESIZE_SIZE / CROP_SIZE))


def _find_split_dir(data_dir, split):
    """Returns the directory holding ``split``'s images (see `folder_source`)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetNotFoundError(f"Data directory {root} does not exist.")
    if split is None:
        return root
    key = "val" if split in SPLIT_ALIASES["val"] else split
    aliases = SPLIT_ALIASES.get(key, (split,))
    for alias in aliases:
        if (root / alias).is_dir():
            return root / alias
    all_aliases = {a for names in SPLIT_ALIASES.values() for a in names}
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in all_aliases)
    if present:
        raise DatasetNotFoundError(
            f"No {split!r} split in {root}: looked for {', '.join(aliases)}; "
            f"found only {', '.join(present)}."
        )
    if root.name in all_aliases and root.name not in aliases:
        raise DatasetNotFoundError(
            f"No {split!r} split in {root}: the directory looks like the "
            f"{root.name!r} split itself (pass split=None to use it as it is)."
        )
    return root  # DATA_DIR is itself a folder of class subfolders (or flat images).


def _resolve_class_index(names, class_index, where):
    """Returns "imagenet" or "compact" for a set of class names (see module docstring)."""
    if class_index not in ("auto", "imagenet", "compact"):
        raise ValueError(
            f"class_index must be 'auto', 'imagenet' or 'compact', got {class_index!r}."
        )
    known = set(imagenet_class_names())
    if class_index == "imagenet":
        unknown = sorted(n for n in names if n not in known)
        if unknown:
            raise DatasetError(
                f"Unknown ImageNet wnid(s) in {where}: {', '.join(unknown[:10])}"
                f"{' ...' if len(unknown) > 10 else ''} (not among the 1000 ILSVRC-2012 classes)."
            )
        return "imagenet"
    if class_index == "compact":
        return "compact"
    wnid_like = [n for n in names if WNID_PATTERN.match(n)]
    if wnid_like and len(wnid_like) < len(names):
        others = sorted(set(names) - set(wnid_like))
        raise DatasetError(
            f"{where} mixes ImageNet wnids with other class names "
            f"({', '.join(others[:5])}); pass class_index='compact' to index them 0..K-1."
        )
    unknown = sorted(n for n in wnid_like if n not in known)
    if unknown:
        raise DatasetError(
            f"Unknown ImageNet wnid(s) in {where}: {', '.join(unknown[:10])} (not among the "
            "1000 ILSVRC-2012 classes); pass class_index='compact' to index them 0..K-1."
        )
    return "imagenet" if names and len(wnid_like) == len(names) else "compact"


def _class_table(present, class_index, class_names, where):
    """Returns ``(mode, class_names, name -> index)`` for the classes found in a split."""
    names = list(class_names) if class_names is not None else sorted(present)
    if class_names is not None:
        if len(set(names)) != len(names):
            raise ValueError("class_names contains duplicates.")
        missing = sorted(set(present) - set(names))
        if missing:
            raise DatasetError(
                f"Class(es) {', '.join(missing[:10])} in {where} are not in the given "
                "class_names."
            )
    if class_names is not None and class_index == "auto":
        # A given list fixes the order; it is the ImageNet order only if it is that list.
        standard = tuple(names) == imagenet_class_names()
        class_index = "imagenet" if standard else "compact"
    mode = _resolve_class_index(names, class_index, where)
    table = tuple(imagenet_class_names()) if mode == "imagenet" else tuple(names)
    return mode, table, {name: i for i, name in enumerate(table)}


def _list_class_folder(folder):
    """Sorted image files and non-image files under one class folder (recursively)."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            (images if _is_image_file(name) else others).append(os.path.join(dirpath, name))
    return images, others


def _list_flat_val(split_dir, files):
    """Paths and wnids of a flat ``ILSVRC2012_val_00000001.JPEG`` folder."""
    wnids = imagenet_validation_wnids()
    paths, labels = [], []
    for name in files:
        match = FLAT_VAL_PATTERN.match(name)
        if match is None:
            raise DatasetError(
                f"{split_dir / name}: a folder without class subfolders must hold ILSVRC-2012 "
                "validation images named ILSVRC2012_val_NNNNNNNN.JPEG; cannot label this file."
            )
        number = int(match.group(1))
        if not 1 <= number <= len(wnids):
            raise DatasetError(
                f"{split_dir / name}: no validation label for image {number} (the labels "
                f"cover 1..{len(wnids)})."
            )
        paths.append(str(split_dir / name))
        labels.append(wnids[number - 1])
    return paths, labels


def folder_source(data_dir, split="train", *, class_index="auto", class_names=None):
    """Lists an image folder (ImageNet layouts or any folder of class subfolders).

    Layouts, tried in this order:

    1. ``data_dir/<split>/<class>/**/*`` where ``<split>`` is the split name or an alias
       (``val`` / ``validation``).
    2. ``data_dir/<split>/ILSVRC2012_val_NNNNNNNN.JPEG`` (no subfolders): the flat
       ILSVRC-2012 validation layout; labels come from tensorflow-datasets'
       ``validation_labels.txt`` by image number (``NNNNNNNN - 1`` is the line).
    3. ``data_dir`` itself holding class subfolders (or flat validation images), e.g.
       ``imagenette/train``, when it has no split subfolders. Asking a directory named
       like another split (``.../train`` with ``split="val"``) is an error;
       ``split=None`` uses ``data_dir`` as it is.

    Files with an image extension (``.jpeg .jpg .png .bmp .gif``, any case) are examples;
    other files are left out and listed in ``non_image_files``. Hidden subfolders
    (``.ipynb_checkpoints``) are ignored.

    Args:
        data_dir: the data directory.
        split: ``"train"``, ``"val"`` (or ``"validation"``), another folder name, or
            None for ``data_dir`` itself.
        class_index: ``"auto"``, ``"imagenet"`` or ``"compact"`` (module docstring).
        class_names: optional class list fixing the compact order (e.g. the training
            source's ``class_names``); every class present must be in it.

    Returns:
        A `Source` with ``element == "path"``.

    Raises:
        DatasetNotFoundError: ``data_dir`` or the split does not exist.
        DatasetError: an empty class folder, no image at all, image files mixed with
            class folders, an unlabellable flat file, or an unknown / mixed wnid.
    """
    split_dir = _find_split_dir(data_dir, split)
    entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    class_dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e.name for e in entries if e.is_file()]
    loose_images = [n for n in loose if _is_image_file(n)]
    non_image = [str(split_dir / n) for n in loose if not _is_image_file(n)]

    if class_dirs:
        if loose_images:
            raise DatasetError(
                f"{split_dir} holds both class folders and loose images "
                f"(e.g. {loose_images[0]}); cannot tell their classes."
            )
        per_class = {}
        for entry in class_dirs:
            images, others = _list_class_folder(entry.path)
            non_image.extend(others)
            if not images:
                raise DatasetError(f"Class folder {entry.path} holds no image files.")
            per_class[entry.name] = images
        mode, table, index = _class_table(per_class, class_index, class_names, split_dir)
        # Listing order: by class index, then path.
        paths, labels = [], []
        for name in sorted(per_class, key=index.__getitem__):
            paths.extend(per_class[name])
            labels.extend([index[name]] * len(per_class[name]))
    elif loose_images:
        flat_paths, wnids = _list_flat_val(split_dir, loose_images)
        if class_index == "auto" and class_names is None:
            class_index = "imagenet"
        mode, table, index = _class_table(set(wnids), class_index, class_names, split_dir)
        order = sorted(range(len(flat_paths)), key=lambda i: (index[wnids[i]], flat_paths[i]))
        paths = [flat_paths[i] for i in order]
        labels = [index[wnids[i]] for i in order]
    else:
        raise DatasetError(f"No image files in {split_dir}.")

    # Object array of str: a fixed-width unicode array would take 4 bytes per character
    # of the longest path, about 0.35 GB for ImageNet's 1.28 M training files.
    paths = np.array(paths, dtype=object)
    labels = np.array(labels, dtype=np.int32)
    return Source(
        location=str(split_dir),
        split=split,
        class_names=table,
        num_classes=len(table),
        class_index=mode,
        dataset=tf.data.Dataset.from_tensor_slices((paths, labels)),
        element="path",
        num_examples=len(paths),
        paths=paths,
        labels=labels,
        non_image_files=tuple(sorted(non_image)),
    )


def tfds_source(
    name,
    split="train",
    *,
    data_dir=None,
    manual_dir=None,
    class_index="auto",
    class_names=None,
):
    """A prepared tensorflow-datasets image classification dataset, without downloads.

    The dataset must already be prepared under ``data_dir``, except that when
    ``manual_dir`` is given and it is not, it is prepared from the files there (for
    ``imagenet2012``: ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar``);
    no download is attempted either way.

    ``imagenet2012`` validation labels are re-derived from each record's file name
    (``ILSVRC2012_val_NNNNNNNN.JPEG``), because tensorflow-datasets labels a validation
    tar by zipping its *sorted* file names with the first lines of the label file,
    which mislabels any tar that is not the complete 50,000 images.

    Args:
        name: TFDS name, e.g. ``"imagenet2012"``, ``"imagenette"``, ``"imagenette/320px-v2"``.
        split: a TFDS split (``"train"``, ``"validation"``, ``"train[:10%]"``; ``"val"`` is
            accepted).
        data_dir: TFDS data directory (default: TFDS's own default).
        manual_dir: directory of manually downloaded files to prepare from.
        class_index: ``"auto"``, ``"imagenet"`` or ``"compact"`` (module docstring);
            ``"compact"`` keeps the dataset's own label order.
        class_names: optional class list fixing the compact order.

    Returns:
        A `Source` with ``element == "bytes"`` (images stay encoded until the pipeline).

    Raises:
        DatasetNotFoundError: not prepared and no ``manual_dir`` (or a missing split).
        DatasetError: unknown wnids for ``class_index="imagenet"``.
    """
    import tensorflow_datasets as tfds  # slow import: only when TFDS is used.

    split = "validation" if split == "val" else split
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if manual_dir is None:
            raise DatasetNotFoundError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; this package "
                "never downloads. Prepare it there, or pass manual_dir."
            )
        if not Path(manual_dir).is_dir():
            raise DatasetNotFoundError(f"Manual directory {manual_dir} does not exist.")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(manual_dir), try_download_gcs=False
            )
        )
    base_split = re.split(r"[\[+]", split)[0]  # "train[:10%]" -> "train"
    if base_split not in builder.info.splits:
        raise DatasetNotFoundError(
            f"TFDS dataset {name!r} in {builder.data_dir} has no split {split!r} "
            f"(it has {', '.join(builder.info.splits)})."
        )
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    own_names = list(builder.info.features[label_key].names)
    mode, table, index = _class_table(own_names, class_index, class_names, f"tfds:{name}")
    mapping = tf.constant([index[n] for n in own_names], tf.int32)

    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={image_key: tfds.decode.SkipDecoding()},
    )
    relabel = builder.name == "imagenet2012" and base_split == "validation"
    val_index = None
    if relabel:
        by_wnid = {w: i for i, w in enumerate(own_names)}
        val_index = tf.constant([by_wnid[w] for w in imagenet_validation_wnids()], tf.int32)

    def to_pair(example):
        label = tf.cast(example[label_key], tf.int32)
        if relabel:
            number = tf.strings.to_number(
                tf.strings.regex_replace(example["file_name"], r"^.*_(\d{8})\..*$", r"\1"),
                tf.int32,
            )
            label = tf.gather(val_index, number - 1)
        return example[image_key], tf.gather(mapping, label)

    ds = ds.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return Source(
        location=f"tfds:{name}",
        split=split,
        class_names=table,
        num_classes=len(table),
        class_index=mode,
        dataset=ds,
        element="bytes",
        num_examples=int(builder.info.splits[split].num_examples),
    )


def load_source(
    data_dir,
    split="train",
    *,
    tfds_name=None,
    manual_dir=None,
    class_index="auto",
    class_names=None,
):
    """`tfds_source` if ``tfds_name`` is given, else `folder_source` (for scripts).

    Args:
        data_dir: image folder, or TFDS data directory when ``tfds_name`` is set.
        split: split name.
        tfds_name: TFDS dataset name, or None for a folder.
        manual_dir: TFDS manual directory (``imagenet2012`` tars).
        class_index: ``"auto"``, ``"imagenet"`` or ``"compact"``.
        class_names: optional class list fixing the compact order.

    Returns:
        A `Source`.
    """
    if tfds_name:
        return tfds_source(
            tfds_name,
            split,
            data_dir=data_dir,
            manual_dir=manual_dir,
            class_index=class_index,
            class_names=class_names,
        )
    return folder_source(data_dir, split, class_index=class_index, class_names=class_names)


# ---------------------------------------------------------------------------------------
# Per-image preprocessing: pure TF, eager or inside tf.data.Dataset.map.

# The largest image decoded: Pillow's default ``Image.MAX_IMAGE_PIXELS`` (its
# decompression-bomb limit, 1024 * 1024 * 1024 // 4 // 3), e.g. 10,000 x 8,947. Decoded
# as RGB uint8 that is 268 MB, and the float resize several times that, per image and
# per parallel map call. ImageNet's largest training photos (a few thousand pixels a
# side) are far below; a 30,000 x 30,000 header (2.7 GB) is refused.
MAX_IMAGE_PIXELS = 89_478_485


def _header_bytes(encoded, offset, length):
    """int64 bytes ``encoded[offset:offset + length]`` (zero-padded if the data is shorter)."""
    raw = tf.io.decode_raw(tf.strings.substr(encoded, offset, length), tf.uint8)
    raw = tf.pad(raw, [[0, length - tf.shape(raw)[0]]])
    return tf.reshape(tf.cast(raw, tf.int64), [length])


def _uint(raw, little_endian):
    weights = [256 ** i for i in range(raw.shape[0])]
    return tf.reduce_sum(raw * tf.constant(weights if little_endian else weights[::-1], tf.int64))


def image_size(encoded):
    """``(height, width)`` of encoded image bytes, read from the header, never decoded.

    JPEG: `tf.io.extract_jpeg_shape` (the SOF marker). PNG: the IHDR chunk (bytes
    16-24, big-endian). GIF: the logical screen (bytes 6-10, little-endian). BMP: the
    info header (bytes 18-26, little-endian; a negative height is a top-down bitmap).
    Anything else gives ``(0, 0)``: unknown here, left to the decoder.

    Args:
        encoded: scalar string tensor of encoded image bytes.

    Returns:
        int64 tensor ``(2,)``. Raises `tf.errors.InvalidArgumentError` for a JPEG whose
        header cannot be parsed (it could not be decoded either).
    """
    magic = tf.strings.substr(encoded, 0, 8)

    def jpeg():
        return tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64)

    def png():
        return tf.stack([_uint(_header_bytes(encoded, 20, 4), False), _uint(_header_bytes(encoded, 16, 4), False)])

    def gif():
        return tf.stack([_uint(_header_bytes(encoded, 8, 2), True), _uint(_header_bytes(encoded, 6, 2), True)])

    def bmp():
        signed = lambda v: tf.abs(tf.where(v >= 2 ** 31, v - 2 ** 32, v))  # noqa: E731
        return tf.stack([signed(_uint(_header_bytes(encoded, 22, 4), True)),
                         signed(_uint(_header_bytes(encoded, 18, 4), True))])

    return tf.case([
        (tf.equal(tf.strings.substr(magic, 0, 3), b"\xff\xd8\xff"), jpeg),
        (tf.equal(magic, b"\x89PNG\r\n\x1a\n"), png),
        (tf.equal(tf.strings.substr(magic, 0, 4), b"GIF8"), gif),
        (tf.equal(tf.strings.substr(magic, 0, 2), b"BM"), bmp),
    ], default=lambda: tf.zeros([2], tf.int64), exclusive=False)


def check_image_size(encoded, max_pixels=MAX_IMAGE_PIXELS):
    """``encoded``, after checking that its header's ``height * width <= max_pixels``.

    Raises:
        tf.errors.InvalidArgumentError: a larger image (inside tf.data: dropped by
        ``ignore_errors`` and counted as skipped, like an undecodable file).
    """
    size = image_size(encoded)
    check = tf.debugging.assert_less_equal(
        size[0] * size[1], tf.constant(max_pixels, tf.int64),
        message=f"image larger than MAX_IMAGE_PIXELS={max_pixels} (height, width in the header)",
        summarize=2)
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


def decode_image(encoded):
    """Decodes JPEG / PNG / GIF / BMP bytes by content to RGB.

    Grayscale becomes RGB by repetition, CMYK JPEGs are converted by the decoder, a GIF
    gives its first frame. An image larger than `MAX_IMAGE_PIXELS` (read from its
    header, `check_image_size`) is refused before anything is decoded.

    Args:
        encoded: scalar string tensor of encoded image bytes.

    Returns:
        uint8 tensor ``(height, width, 3)``. Raises `tf.errors.InvalidArgumentError`
        (inside tf.data: an error that `ignore_errors` drops) for undecodable data and
        for images over the pixel limit.
    """
    encoded = check_image_size(encoded)
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _shorter_side_shape(shape, size):
    """``(height, width)`` with the shorter side ``size``, the other rounded."""
    shorter = tf.cast(tf.reduce_min(shape), tf.float64)
    return tf.cast(tf.round(tf.cast(shape, tf.float64) * size / shorter), tf.int32)


def _in_range(image):
    # Bilinear / triangle weights are >= 0 and sum to 1; the clip only removes float
    # round-off (255.00005) so pixels stay in [0, 255].
    return tf.clip_by_value(image, 0.0, 255.0)


def resize_shorter_side(image, size=RESIZE_SIZE):
    """Rescales an image so that its shorter side is ``size`` (paper §2).

    Bilinear; when shrinking, antialiased (the triangle filter is widened by the
    scale, like Pillow's resize), so large photos are not aliased. An image whose
    shorter side already is ``size`` is only cast.

    Args:
        image: ``(height, width, 3)`` tensor with pixels in ``[0, 255]``, any dtype.
        size: target length of the shorter side.

    Returns:
        float32 tensor in ``[0, 255]``; shorter side ``size``, longer side
        ``round(longer * size / shorter)``.
    """
    shape = tf.shape(image)[:2]
    shorter = tf.reduce_min(shape)
    new_shape = _shorter_side_shape(shape, size)
    return tf.case(
        [
            (tf.equal(shorter, size), lambda: tf.cast(image, tf.float32)),
            # Enlarging: antialiasing changes nothing (up to round-off) but costs 2.5x.
            (tf.less(shorter, size), lambda: _in_range(tf.image.resize(image, new_shape))),
        ],
        default=lambda: _in_range(tf.image.resize(image, new_shape, antialias=True)),
    )


def central_crop(image, size):
    """The central ``size x size`` window (offsets rounded down).

    Args:
        image: ``(height, width, channels)`` tensor with both sides >= ``size``.
        size: side of the square crop.

    Returns:
        ``(size, size, channels)`` tensor.
    """
    shape = tf.shape(image)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    crop = image[top : top + size, left : left + size]
    crop.set_shape([size, size, image.shape[-1]])
    return crop


def resize_central_square(image, size=RESIZE_SIZE):
    """``central_crop(resize_shorter_side(image, size), size)``, computing only the square.

    When shrinking, the antialiased resampling (`tf.raw_ops.ScaleAndTranslate`, what
    `tf.image.resize` runs with ``antialias=True``) is evaluated only on the central
    window, with the same per-axis scales: the result equals the full resize followed
    by the crop up to float round-off, for about 10-25% less work on 4:3 photos.

    Args:
        image: ``(height, width, 3)`` tensor with pixels in ``[0, 255]``, any dtype.
        size: side of the square.

    Returns:
        float32 ``(size, size, 3)`` tensor in ``[0, 255]``.
    """
    shape = tf.shape(image)[:2]
    new_shape = _shorter_side_shape(shape, size)

    def shrink():
        scale = tf.cast(new_shape, tf.float32) / tf.cast(shape, tf.float32)
        offset = tf.cast((new_shape - size) // 2, tf.float32)
        square = tf.raw_ops.ScaleAndTranslate(
            images=image[tf.newaxis],
            size=[size, size],
            scale=scale,
            translation=-offset,
            kernel_type="triangle",
            antialias=True,
        )[0]
        return _in_range(square)

    square = tf.cond(
        tf.reduce_min(shape) > size,
        shrink,
        lambda: central_crop(resize_shorter_side(image, size), size),
    )
    square.set_shape([size, size, 3])
    return square


def load_image(data, resize_size=RESIZE_SIZE, from_path=True):
    """Reads, decodes, rescales the shorter side and takes the central square (§2).

    Args:
        data: scalar string: a file path if ``from_path``, else encoded image bytes.
        resize_size: side of the square (256 in the paper).
        from_path: whether ``data`` is a path.

    Returns:
        float32 ``(resize_size, resize_size, 3)`` tensor, pixels in ``[0, 255]``.
    """
    encoded = tf.io.read_file(data) if from_path else data
    return resize_central_square(decode_image(encoded), resize_size)


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


# ---------------------------------------------------------------------------------------
# Counting the files that cannot be decoded.


class SkipCounter:
    """Counts the images a pipeline could not decode, exactly.

    How: the pipeline numbers the elements of each pass (``enumerate`` after
    shuffling) and appends one sentinel element that is never dropped. After
    ``ignore_errors`` has dropped the undecodable ones, a ``scan`` sees the numbers of
    the survivors in order; every gap between consecutive numbers is a dropped file,
    and the sentinel closes the last gap. The counts are `tf.Variable` s on the host,
    updated by that sequential step, so after a pass over a finite dataset (one
    ``model.fit`` epoch, a ``for`` loop) they are exact; while iterating they include
    the few elements read ahead by ``prefetch``. Each pass (each new iterator) counts
    its own skips, so two passes over one bad file count it twice. A pass that stops
    early has counted the files it read (see ``drop_remainder`` of `training_dataset`).

    Example:
    >>> counter = SkipCounter()
    >>> ds = training_dataset(source, 128, counter=counter)  # doctest: +SKIP
    >>> for images, labels in ds: ...  # doctest: +SKIP
    >>> counter.skipped  # doctest: +SKIP
    """

    def __init__(self):
        with tf.init_scope():
            self._skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped")
            self._images = tf.Variable(0, dtype=tf.int64, trainable=False, name="images")

    @property
    def skipped(self):
        """Number of files that could not be decoded so far (int)."""
        return int(self._skipped.numpy())

    @property
    def images(self):
        """Number of images decoded so far (int)."""
        return int(self._images.numpy())

    def reset(self):
        """Sets both counts to zero."""
        self._skipped.assign(0)
        self._images.assign(0)

    def count(self, last_index, element):
        """`tf.data.Dataset.scan` step over ``(index, image, label)`` survivors.

        Args:
            last_index: int64 index of the previous survivor (-1 at the start).
            element: ``(index, image, label)``; ``label < 0`` marks the sentinel.

        Returns:
            ``(index, (image, label))``: the new state and the element without its index.
        """
        index, image, label = element
        is_image = tf.cast(label >= 0, tf.int64)
        updates = [
            self._skipped.assign_add(index - last_index - 1),
            self._images.assign_add(is_image),
        ]
        with tf.control_dependencies(updates):
            return index, (tf.identity(image), tf.identity(label))


class SkipReport(keras.callbacks.Callback):
    """Keras callback: prints, and logs as ``skipped_files``, the undecodable files.

    At the end of every epoch it prints how many files of that epoch could not be
    decoded (and the total so far), and adds ``skipped_files`` (this epoch) to the logs
    so `keras.callbacks.CSVLogger` / History record it.

    Args:
        counter: the `SkipCounter` given to the training pipeline.
        non_image_files: number of non-image files left out at listing (reported once).
    """

    def __init__(self, counter, non_image_files=0):
        super().__init__()
        self.counter = counter
        self.non_image_files = int(non_image_files)
        self._start = 0

    def on_train_begin(self, logs=None):
        if self.non_image_files:
            print(f"Data: {self.non_image_files} non-image file(s) left out when listing.")

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self.counter.skipped

    def on_epoch_end(self, epoch, logs=None):
        skipped = self.counter.skipped - self._start
        if logs is not None:
            logs["skipped_files"] = skipped
        print(
            f"Epoch {epoch + 1}: {skipped} undecodable file(s) skipped "
            f"({self.counter.skipped} in total)."
        )


# ---------------------------------------------------------------------------------------
# Pipelines.


def _mean_tensor(mean, resize_size):
    """float32 tensor for ``mean`` (None, (3,) or (S, S, 3) array, resized if needed)."""
    if mean is None:
        return None
    mean = np.asarray(mean, np.float32)
    if mean.shape == (3,):
        return tf.constant(mean)
    if mean.ndim != 3 or mean.shape[2] != 3 or mean.shape[0] != mean.shape[1]:
        raise ValueError(f"mean must be None, (3,) or (S, S, 3); got shape {mean.shape}.")
    if mean.shape[0] != resize_size:
        mean = tf.image.resize(mean, [resize_size, resize_size], antialias=True).numpy()
    return tf.constant(mean)


def _select_mean(stats, mean):
    """The mean array to subtract: ``"image"``, ``"channel"`` or ``"none"`` of ``stats``,
    or ``mean`` itself when it is an array."""
    if mean is not None and not isinstance(mean, str):
        return np.asarray(mean, np.float32)
    if mean is None:
        mean = "image" if stats is not None else "none"
    if mean not in ("image", "channel", "none"):
        raise ValueError(f"mean must be 'image', 'channel' or 'none', got {mean!r}.")
    if mean == "none":
        return None
    if stats is None:
        raise ValueError(f"mean={mean!r} needs stats (keras_alexnet.stats.load_stats).")
    return stats.mean_image if mean == "image" else stats.channel_mean


CHANNEL_ORDERS = ("RGB", "BGR")


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


def _check_sizes(crop_size, resize_size):
    if not 0 < crop_size <= resize_size:
        raise ValueError(
            f"crop_size must be in (0, resize_size={resize_size}], got {crop_size}."
        )


def _examples(source, shuffle, seed, num_shards, shard_index, shuffle_buffer):
    """(string, label) elements of one shard, shuffled per iteration if asked."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}.")
    if source.paths is None:  # TFDS: records stream from disk; shuffle with a buffer.
        ds = source.dataset
        if num_shards > 1:
            ds = ds.shard(num_shards, shard_index)
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        return ds
    # Folders: a uniform permutation of this shard's list, new every iteration.
    paths = tf.constant(source.paths[shard_index::num_shards])
    labels = tf.constant(source.labels[shard_index::num_shards])
    count = int(paths.shape[0])
    if count == 0:
        raise DatasetError(f"Shard {shard_index} of {num_shards} of {source.location} is empty.")
    if shuffle:
        order = (
            tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            .take(1)
            .map(
                lambda key: tf.random.experimental.stateless_shuffle(
                    tf.range(count), seed=tf.stack([key, tf.constant(count, tf.int64)])
                )
            )
            .unbatch()
        )
    else:
        order = tf.data.Dataset.range(count)
    return order.map(lambda i: (tf.gather(paths, i), tf.gather(labels, i)))


def _views(ds, view, view_shape, counter, seeds=None):
    """Maps ``view(data[, seed])`` over ``(data, label)`` in parallel, in order.

    Undecodable elements are dropped; with a `SkipCounter` they are counted exactly
    (see its docstring: numbered elements, a sentinel, a scan over the survivors).
    """
    if seeds is None:
        seeds = tf.data.Dataset.from_tensors(tf.zeros([2], tf.int64)).repeat()
    if counter is None:
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda example, seed: (view(example[0], seed), example[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return ds.ignore_errors(log_warning=True)

    sentinel = tf.data.Dataset.from_tensors((tf.constant(""), tf.constant(-1, tf.int32)))
    ds = ds.concatenate(sentinel).enumerate()

    def guarded_view(numbered, seed):
        index, (data, label) = numbered
        image = tf.cond(
            label < 0, lambda: tf.zeros(view_shape), lambda: view(data, seed)
        )
        return index, image, label

    ds = tf.data.Dataset.zip((ds, seeds)).map(
        guarded_view, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    ds = ds.ignore_errors(log_warning=True)
    ds = ds.scan(tf.constant(-1, tf.int64), counter.count)
    return ds.filter(lambda image, label: label >= 0)


def _batch(ds, batch_size, drop_remainder, num_shards):
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if num_shards > 1:  # Sharded by hand: tf.distribute must not shard again.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
        ds = ds.with_options(options)
    return ds


def training_dataset(
    source,
    batch_size=128,
    *,
    stats=None,
    mean=None,
    crop_size=CROP_SIZE,
    resize_size=RESIZE_SIZE,
    pca_stddev=PCA_STDDEV,
    seed=None,
    num_shards=1,
    shard_index=0,
    shuffle_buffer=10_000,
    drop_remainder=False,
    counter=None,
):
    """The paper's training input (§2, §4.1), one pass over the source per iteration.

    Per image: decode once, shorter side to ``resize_size``, central square, random
    ``crop_size`` crop, minus the mean (image cropped at the same window, or channel
    mean), random horizontal flip. Per batch: `PCAColorAugmentation` (training mode)
    with the dataset's eigen-decomposition from ``stats`` (its ``pca_eigenvalues``),
    or ImageNet's published values without ``stats``.

    Randomness: with an integer ``seed`` the shuffle order, crops, flips and colour
    noise are a function of the seed and of the iteration number (each new iteration,
    i.e. epoch, differs; two datasets built with the same seed give the same batches).
    Folder sources are fully reshuffled every epoch; TFDS sources use a shuffle buffer
    of ``shuffle_buffer`` records.

    Distribution: ``num_shards`` / ``shard_index`` keep every ``num_shards``-th example
    (before shuffling) and switch tf.distribute's auto-sharding off; with
    `tf.distribute.Strategy.distribute_datasets_from_function` pass
    ``ctx.num_input_pipelines`` and ``ctx.input_pipeline_id``. Without them the dataset
    works with ``experimental_distribute_dataset`` / ``model.fit`` as is.

    Args:
        source: a `Source`.
        batch_size: images per batch.
        stats: a `keras_alexnet.stats.DatasetStats` (mean and PCA), or None.
        mean: ``"image"`` (the paper), ``"channel"`` or ``"none"``; default ``"image"``
            when ``stats`` is given, else ``"none"``.
        crop_size: side of the crops (227).
        resize_size: side of the central square (256).
        pca_stddev: standard deviation of the PCA noise coefficients (0.1); 0 disables.
        seed: integer seed, or None for nondeterministic order and augmentation.
        num_shards: number of shards to split the source into.
        shard_index: which shard this pipeline reads.
        shuffle_buffer: shuffle buffer size for TFDS sources.
        drop_remainder: drop the last partial batch (static batch shape). Keep False
            with a ``counter`` and ``model.fit``: from its second epoch on, Keras stops
            after as many batches as the first epoch had, so only a partial last batch
            makes it read to the end of the data, where the count is completed.
        counter: optional `SkipCounter` counting undecodable files.

    Returns:
        `tf.data.Dataset` of ``(images, labels)``: float32
        ``(batch, crop_size, crop_size, 3)`` and int32 ``(batch,)``.
    """
    _check_sizes(crop_size, resize_size)
    mean_t = _mean_tensor(_select_mean(stats, mean), resize_size)
    from_path = source.element == "path"

    def view(data, view_seed):
        image = load_image(data, resize_size, from_path)
        return random_crop_and_flip(image, view_seed, crop_size, mean_t)

    ds = _examples(source, True, seed, num_shards, shard_index, shuffle_buffer)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = _views(ds, view, [crop_size, crop_size, 3], counter, seeds)
    ds = _batch(ds, batch_size, drop_remainder, num_shards)
    if pca_stddev:
        if stats is not None:
            eigenvalues, eigenvectors = stats.pca_eigenvalues, stats.eigenvectors
        else:
            eigenvalues, eigenvectors = IMAGENET_EIGENVALUES, IMAGENET_EIGENVECTORS
        pca = PCAColorAugmentation(eigenvalues, eigenvectors, stddev=pca_stddev, seed=seed)
        # Sequential map: the layer's RNG state advances once per batch, in order.
        ds = ds.map(lambda images, labels: (pca(images, training=True), labels))
    return ds.prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(
    source,
    batch_size=128,
    *,
    stats=None,
    mean=None,
    crops="center",
    crop_size=CROP_SIZE,
    resize_size=RESIZE_SIZE,
    std=None,
    channel_order="RGB",
    num_shards=1,
    shard_index=0,
    counter=None,
):
    """The paper's test input (§4.1), in listing order, every image once.

    Args:
        source: a `Source`.
        batch_size: images per batch (with ``crops="ten"``, each image is 10 crops).
        stats: a `keras_alexnet.stats.DatasetStats` (the *training* set's), or None.
        mean: ``"image"``, ``"channel"`` or ``"none"``; default ``"image"`` with stats.
            Or the mean itself: a ``(3,)`` or ``(S, S, 3)`` RGB array in pixel units.
        crops: ``"center"`` (one centre crop) or ``"ten"`` (`ten_crops`).
        crop_size: side of the crops (227).
        resize_size: side of the central square (256).
        std, channel_order: see `normalize` (a converted network's own input, e.g.
            torchvision's division by the ImageNet std, Caffe's BGR); default: none.
        num_shards: number of shards (every ``num_shards``-th example).
        shard_index: which shard.
        counter: optional `SkipCounter` counting undecodable files.

    Returns:
        `tf.data.Dataset` of ``(images, labels)``: images float32
        ``(batch, crop_size, crop_size, 3)`` for ``"center"``, or
        ``(batch, 10, crop_size, crop_size, 3)`` for ``"ten"`` (average the softmax over
        axis 1); labels int32 ``(batch,)``. The last batch may be smaller.
    """
    if crops not in ("center", "ten"):
        raise ValueError(f"crops must be 'center' or 'ten', got {crops!r}.")
    _check_sizes(crop_size, resize_size)
    mean_t = _mean_tensor(_select_mean(stats, mean), resize_size)
    from_path = source.element == "path"
    crop_shape = [crop_size, crop_size, 3]
    if crops == "ten":
        views, view_shape = ten_crops, [10, *crop_shape]
    else:
        views, view_shape = center_crop, crop_shape

    def view(data, unused_seed):
        crops = views(load_image(data, resize_size, from_path), crop_size, mean_t)
        return normalize(crops, std, channel_order)

    ds = _examples(source, False, None, num_shards, shard_index, 1)
    ds = _views(ds, view, view_shape, counter)
    ds = _batch(ds, batch_size, False, num_shards)
    return ds.prefetch(tf.data.AUTOTUNE)
