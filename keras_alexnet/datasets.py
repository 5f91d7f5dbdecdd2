"""What a ``--data-dir`` names, and the prepared directories' format.

- `load_source` picks the source of a split from command-line style arguments: a TFDS
  dataset (``--tfds``), a directory written by ``python -m keras_alexnet.prepare`` (found by
  its ``manifest.json``, no other flag), or an image folder
  (`keras_alexnet.sources.folder_source`).
- `prepared_source` reads a prepared directory: the squares made once (the paper's §2
  down-sampling), in sharded TFRecord files. Its format (`PREPARED_FORMAT`,
  `RECORD_FEATURES`, the manifest) is written here once; `keras_alexnet.prepare` writes it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_alexnet.images import no_autograph
from keras_alexnet.sources import (
    SPLIT_ALIASES,
    DatasetError,
    DatasetNotFoundError,
    Source,
    class_table,
    folder_source,
    tfds_source,
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
    """`tfds_source` if ``tfds_name`` is given, else `prepared_source` if ``data_dir``
    holds a prepared manifest (`is_prepared`), else `folder_source` (for scripts).

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
    if not tfds_name and is_prepared(data_dir):
        return prepared_source(data_dir, split, class_index=class_index, class_names=class_names)
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


PREPARED_FORMAT = "keras_alexnet.prepared"
PREPARED_VERSION = 1
MANIFEST_FILE = "manifest.json"
# The features of every record of a prepared shard.
RECORD_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),  # the encoded square
    "label": tf.io.FixedLenFeature([], tf.int64),  # index into the manifest's class_names
    "key": tf.io.FixedLenFeature([], tf.string),  # the source file's name
}


def is_prepared(data_dir):
    """Whether ``data_dir`` holds a prepared manifest (``manifest.json`` of `PREPARED_FORMAT`)."""
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == PREPARED_FORMAT
    except (ValueError, AttributeError):
        return False


def read_manifest(data_dir):
    """The manifest of a prepared directory, after checking its format and version.

    Raises:
        DatasetNotFoundError: no manifest.
        DatasetError: a manifest that is not JSON, of another format or of another
            version (named).
    """
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        raise DatasetNotFoundError(f"No prepared manifest {path}.")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise DatasetError(f"{path}: not a readable manifest ({e}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PREPARED_FORMAT:
        raise DatasetError(f"{path}: not a {PREPARED_FORMAT} manifest.")
    if manifest.get("version") != PREPARED_VERSION:
        raise DatasetError(
            f"{path}: {PREPARED_FORMAT} version {manifest.get('version')!r}; this package reads "
            f"version {PREPARED_VERSION}. Prepare the data again with python -m keras_alexnet.prepare."
        )
    return manifest


def _check_shards(root, manifest, split):
    """The split's shard paths, after checking each one's presence and size (named)."""
    where = root / MANIFEST_FILE
    entry = manifest["splits"][split]
    shards = entry["shards"]
    if sum(s["records"] for s in shards) != entry["count"]:
        raise DatasetError(
            f"{where}: split {split!r} says {entry['count']} images but its shards list "
            f"{sum(s['records'] for s in shards)} records."
        )
    paths = []
    for shard in shards:
        path = root / shard["file"]
        if not path.is_file():
            raise DatasetError(f"{path}: listed in {where} but missing.")
        size = path.stat().st_size
        if size != shard["bytes"]:
            raise DatasetError(
                f"{path}: {size} bytes, {where} says {shard['bytes']} (truncated or replaced); "
                "delete it and run python -m keras_alexnet.prepare again to rewrite it."
            )
        paths.append(str(path))
    return tuple(paths)


def prepared_records(files, label_map=None, shuffle=False, seed=None):
    """``(encoded square, int32 label)`` of prepared shards, shard after shard interleaved.

    Deterministic: the files in the given order, one after the other (the records in
    the order they were prepared: for a validation split, the listing order); with
    ``shuffle``, a permutation of the files drawn anew every iteration from ``seed``,
    up to 16 read at once by a fixed-length parallel `tf.data.Dataset.interleave` with
    ``deterministic=True`` (the same records in the same order on every machine).

    Args:
        files: shard paths (`Source.files`, or a subset of them for one worker).
        label_map: optional int32 array, stored label -> class index.
        shuffle: permute the files every iteration.
        seed: seed of that permutation.

    Returns:
        `tf.data.Dataset` of ``(string, int32)``.
    """
    files_ds = tf.data.Dataset.from_tensor_slices(list(files))
    if shuffle:
        files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    mapping = None if label_map is None else tf.constant(label_map, tf.int32)

    def parse(record):
        example = tf.io.parse_single_example(record, RECORD_FEATURES)
        label = tf.cast(example["label"], tf.int32)
        return example["image"], label if mapping is None else tf.gather(mapping, label)

    return files_ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 16) if shuffle else 1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).map(no_autograph(parse), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def prepared_source(data_dir, split="train", *, class_index="auto", class_names=None):
    """A directory written by ``python -m keras_alexnet.prepare``: squares made once.

    The manifest's format and version, and every shard's presence and size, are checked
    here, so a missing or truncated shard is an error naming it before any training
    (a shard damaged inside at the same size fails when read: see `naming_damaged_shard`).

    Args:
        data_dir: the prepared directory (holding ``manifest.json``).
        split: ``"train"`` or ``"val"`` (``"validation"``).
        class_index, class_names: as for `folder_source`; by default the indices stored
            at preparation. Otherwise the records are relabelled by class name.

    Returns:
        A `Source` with ``element == "square"`` (``resize_size``, ``encoding``, ``files``).

    Raises:
        DatasetNotFoundError: no such split.
        DatasetError: a bad manifest, a missing or truncated shard, inconsistent counts.
    """
    root = Path(data_dir)
    manifest = read_manifest(root)
    key = "val" if split in SPLIT_ALIASES["val"] else split
    if key not in manifest["splits"]:
        raise DatasetNotFoundError(
            f"No {split!r} split in {root / MANIFEST_FILE} (it has {', '.join(manifest['splits'])})."
        )
    files = _check_shards(root, manifest, key)
    entry = manifest["splits"][key]
    stored = tuple(manifest["class_names"])
    label_map = None
    if class_names is None and class_index in ("auto", manifest["class_index"]):
        mode, table = manifest["class_index"], stored
    else:
        mode, table, index = class_table(entry["classes"], class_index, class_names, str(root / key))
        if table != stored:
            label_map = np.array([index.get(name, -1) for name in stored], np.int32)
    return Source(
        location=f"{root}:{key}",
        split=split,
        class_names=table,
        num_classes=len(table),
        class_index=mode,
        dataset=prepared_records(files, label_map),
        element="square",
        num_examples=int(entry["count"]),
        non_image_files=tuple(entry.get("non_image_files", ())),
        resize_size=int(manifest["resize_size"]),
        encoding=manifest["encoding"],
        files=files,
        label_map=label_map,
    )


def find_damaged_shard(files):
    """The first of ``files`` that cannot be read to its end as TFRecords, or None."""
    for path in files:
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except tf.errors.DataLossError:
            return path
    return None


@contextlib.contextmanager
def naming_damaged_shard(*sources):
    """Turns a `tf.errors.DataLossError` read from prepared shards into a `DatasetError`
    naming the damaged shard (TensorFlow's message names only a byte offset)."""
    try:
        yield
    except tf.errors.DataLossError as e:
        for source in sources:
            bad = source is not None and find_damaged_shard(source.files)
            if bad:
                raise DatasetError(
                    f"{bad}: damaged TFRecord shard ({e.message.strip().splitlines()[-1][:200]}); "
                    "delete it and its .done file and run python -m keras_alexnet.prepare again."
                ) from e
        raise
