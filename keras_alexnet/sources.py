"""Where images come from: listing a data set and fixing the class index of every example.

- `folder_source`: an ImageNet-style folder, ``DIR/train/<class>/*.JPEG`` and
  ``DIR/val/<class>/*.JPEG``, the flat ``DIR/val/ILSVRC2012_val_00000001.JPEG``
  layout (labelled from the 50,000 validation labels that ship inside
  tensorflow-datasets), or ``DIR`` itself being a folder of class subfolders.
- `tfds_source`: a prepared tensorflow-datasets dataset by name (e.g. ``imagenette``),
  or ``imagenet2012`` prepared offline from the two manual tars. Nothing is ever
  downloaded.
- a directory written by ``python -m keras_alexnet.prepare`` is read by
  `keras_alexnet.datasets.prepared_source`; `keras_alexnet.datasets.load_source` picks one
  of the three from command-line style arguments.

All return a `Source`: file paths (folders), int labels, ``class_names``,
``num_classes`` and a `tf.data.Dataset` of ``(path or encoded bytes, label)``; the
pipelines of `keras_alexnet.data` turn it into batches.

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
`keras_alexnet.images.decode_image`, so PNG/GIF/BMP content and grayscale or CMYK JPEGs become RGB.
Files that still cannot be decoded are dropped (``ignore_errors``) and counted by an
optional `keras_alexnet.data.SkipCounter`; `keras_alexnet.data.SkipReport` prints the count at the end of every epoch. Files
without an image extension are left out when the folder is listed and are listed in
``Source.non_image_files``. Structural problems (missing split, empty class folder,
unknown wnid, no images) raise a `DatasetError` naming the path before any training.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_alexnet.images import no_autograph
from keras_alexnet.imagenet import WNID_PATTERN, imagenet_class_names, imagenet_validation_wnids

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
            by class, then path) for folders, in TFDS's stored order for TFDS, in shard
            order for a prepared directory. The string is a file path if
            ``element == "path"``, encoded image bytes if ``"bytes"``, the encoded
            ``resize_size`` square if ``"square"`` (`prepared_source`).
        element: ``"path"``, ``"bytes"`` or ``"square"``.
        num_examples: number of examples (image files, or TFDS records).
        paths: the image file paths (numpy object array of str), or None for TFDS.
        labels: int32 numpy array of class indices matching ``paths``, or None for TFDS.
        non_image_files: files left out when listing because their extension is not an
            image extension (``.DS_Store``, ``.txt``, ...).
        resize_size: for ``element == "square"``: the side of the stored squares.
        encoding: for ``element == "square"``: ``"jpeg"``, ``"png"`` or ``"raw"``.
        files: for ``element == "square"``: the shard files, in order
            (`prepared_records` reads any subset of them).
        label_map: for ``element == "square"``: int32 array, stored label -> this
            source's class index, or None when they are the same.
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
    resize_size: int | None = None
    encoding: str | None = None
    files: tuple = ()
    label_map: np.ndarray | None = None


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


def class_table(present, class_index, class_names, where):
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
        mode, table, index = class_table(per_class, class_index, class_names, split_dir)
        # Listing order: by class index, then path.
        paths, labels = [], []
        for name in sorted(per_class, key=index.__getitem__):
            paths.extend(per_class[name])
            labels.extend([index[name]] * len(per_class[name]))
    elif loose_images:
        flat_paths, wnids = _list_flat_val(split_dir, loose_images)
        if class_index == "auto" and class_names is None:
            class_index = "imagenet"
        mode, table, index = class_table(set(wnids), class_index, class_names, split_dir)
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
    mode, table, index = class_table(own_names, class_index, class_names, f"tfds:{name}")
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

    ds = ds.map(no_autograph(to_pair), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
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
