"""The paper's 256x256 data set made once (docs/paper.md §2): ``python -m keras_alexnet.prepare``.

The paper down-sampled ImageNet once: shorter side to 256, central 256x256 square. The
on-the-fly pipeline does that every epoch from the full-size JPEGs; this command does it
once, with the same functions (`keras_alexnet.images.decode_image` and
`keras_alexnet.images.resize_central_square`; the float square rounded to uint8), and
writes the squares of the train and val splits as sharded TFRecord files::

    python -m keras_alexnet.prepare --data-dir DIR --out OUT [--resize-size 256] \\
        [--shards 16] [--val-shards 4] [--encoding jpeg|png|raw] [--workers N]
    python -m keras_alexnet.prepare --tfds imagenet2012 --data-dir TFDS_DIR \\
        [--manual-dir DIR_WITH_ILSVRC2012_TARS] --out OUT

``DIR`` is any folder `keras_alexnet.sources.folder_source` reads; with ``--tfds`` the
images come from a tensorflow-datasets dataset (`keras_alexnet.sources.tfds_source`: made
from ``--manual-dir`` first where it is not prepared, never downloaded), each shard from its
own slice of the split (TFDS stores its training records shuffled). Every tool that takes
``--data-dir`` (``train.py``, ``evaluate.py``, ``python -m keras_alexnet.stats``) then
reads ``OUT`` as it is: `keras_alexnet.datasets.load_source` finds ``OUT/manifest.json``.

Files in ``OUT``:

- ``train-00000-of-00016.tfrecord`` ...: records with ``image`` (the encoded square),
  ``label`` (int64 index into the manifest's ``class_names``) and ``key`` (the source
  file's name). Training shards hold a seeded permutation of the images (every shard
  mixes the classes); validation shards keep the listing order.
- ``<shard>.done``: written after the shard was renamed into place (its record count,
  size and skipped files). A killed run, run again, keeps the finished shards.
- ``manifest.json``: ``format`` (`keras_alexnet.datasets.PREPARED_FORMAT`), ``version``,
  ``source``, ``resize_size``, ``encoding`` (and ``jpeg_quality``), ``class_index``,
  ``class_names``, and per split ``count``, ``classes`` (present), ``shards`` (file,
  records, bytes), ``skipped`` (file and reason: undecodable, or over
  `keras_alexnet.images.MAX_IMAGE_PIXELS`) and ``non_image_files``.

Encoding (measured by ``bench/bench_prepare_encoding.py`` on the 100 photos of
``imagenet-sample/val``, median 500x375, one thread, Xeon with AVX512F / AVX512_BF16;
error = |decoded - on-the-fly float32 square| in pixel units)::

    encoding            KB/image  decode ms  max err  mean err   ImageNet train (1.28 M)
    jpeg q95 4:2:0        29.1      0.38     100.7     2.43       37 GB
    jpeg q95 4:4:4        37.1      0.46      27.9     2.01       47 GB
    png (lossless)       108.0      1.13       0.5     0.24      138 GB
    raw uint8            196.6      0.13       0.5     0.24      252 GB

The default is JPEG quality 95 without chroma subsampling: a third of PNG's disk (PNG
saves nothing over ImageNet's own full-size JPEGs, about 110 KB each) and decoded 2.5x
faster than PNG, for a mean error of 2 pixel levels (TF's default 4:2:0 subsampling
costs up to 100 levels at coloured edges). ``--encoding png`` or ``raw`` give the
on-the-fly squares up to the uint8 rounding (0.5), e.g. to compare the two pipelines.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np

from keras_alexnet import datasets, preprocessing as pre_lib, run_files, sources

ENCODINGS = ("jpeg", "png", "raw")
JPEG_QUALITY = 95
# Per-record bytes besides the image: TFRecord framing (16), feature keys, the label and
# a key of about 30 characters (measured: ~90).
RECORD_OVERHEAD = 100


def shard_name(split, index, count):
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _identity(source, resize_size, encoding, jpeg_quality):
    """What makes two preparations the same data set (written in every marker and the manifest)."""
    return {"source": source, "resize_size": int(resize_size), "encoding": encoding,
            "jpeg_quality": int(jpeg_quality) if encoding == "jpeg" else None}


_ENCODER = {}


def _encoder(resize_size, encoding, quality):
    """file bytes -> encoded uint8 square (a `tf.function`, traced once per process)."""
    key = (resize_size, encoding, quality)
    if key not in _ENCODER:
        import tensorflow as tf

        from keras_alexnet import images as image_lib

        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def encode(data):
            square = image_lib.resize_central_square(image_lib.decode_image(data), resize_size)
            square = tf.cast(tf.round(square), tf.uint8)
            if encoding == "jpeg":
                return tf.io.encode_jpeg(square, quality=quality, chroma_downsampling=False)
            if encoding == "png":
                return tf.io.encode_png(square)
            return square

        if encoding == "raw":
            _ENCODER[key] = lambda data: encode(data).numpy().tobytes()
        else:
            _ENCODER[key] = lambda data: encode(data).numpy()
    return _ENCODER[key]


def _example(image, label, key):
    import tensorflow as tf

    feature = tf.train.Feature
    return tf.train.Example(features=tf.train.Features(feature={
        "image": feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": feature(int64_list=tf.train.Int64List(value=[int(label)])),
        "key": feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
    })).SerializeToString()


def _read(items):
    """``(name, read, label)`` for each image of a shard's ``items``: a list of ``(file,
    label)``, or a `_tfds_slice` dict; ``read()`` gives the file's bytes."""
    import tensorflow as tf

    if isinstance(items, dict):
        source = sources.tfds_source(items["tfds"], items["split"], data_dir=items["data_dir"],
                                     class_index=items["class_index"], class_names=items["class_names"])
        for i, (data, label) in enumerate(source.dataset):
            yield f"{items['split']}#{i}", (lambda data=data: data), int(label)
    else:
        for file, label in items:
            yield file, (lambda file=file: tf.io.read_file(file)), label


def _count(items):
    return items["count"] if isinstance(items, dict) else len(items)


def write_shard(task):
    """Writes one shard (a temporary name, renamed when complete, then its ``.done`` marker).

    Args:
        task: ``(path, items, identity)``; ``items``: ``[(file, label), ...]``, or a slice
            of a TFDS split (`_tfds_slice`).

    Returns:
        The marker's dict: ``file``, ``records``, ``bytes``, ``labels`` (those written),
        ``skipped``.
    """
    import tensorflow as tf

    path, items, identity = task
    path = Path(path)
    encode = _encoder(identity["resize_size"], identity["encoding"], identity["jpeg_quality"])
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    records, labels, skipped = 0, set(), []
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for name, read, label in _read(items):
            try:
                image = encode(read())
            except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
                reason = e.message.strip().splitlines()[0][:200]
                skipped.append({"file": name, "reason": reason})
                continue
            writer.write(_example(image, label, os.path.basename(name)))
            records += 1
            labels.add(label)
    os.replace(tmp, path)
    done = {**identity, "file": path.name, "records": records, "bytes": path.stat().st_size,
            "labels": sorted(labels), "skipped": skipped}
    run_files.atomic_write_text(path.with_name(path.name + ".done"), json.dumps(done))
    return done


def _finished(path, identity):
    """The marker of a complete shard, or None (refuses a shard of another data set)."""
    marker = path.with_name(path.name + ".done")
    if not marker.is_file() or not path.is_file():
        return None
    done = json.loads(marker.read_text())
    if {k: done.get(k) for k in identity} != identity:
        raise sources.DatasetError(
            f"{marker}: a shard of another data set ({done.get('source')}, {done.get('resize_size')}px, "
            f"{done.get('encoding')}); use another --out."
        )
    return done if path.stat().st_size == done["bytes"] else None


def _tfds_slice(tfds, source, start, stop):
    """A shard's items for a TFDS source: records ``start:stop`` of its split, read by
    the worker process that writes the shard."""
    return {"tfds": tfds["name"], "data_dir": tfds["data_dir"], "split": f"{source.split}[{start}:{stop}]",
            "class_index": source.class_index, "class_names": list(source.class_names), "count": stop - start}


def _plan(source, split, num_shards, out, seed=0, tfds=None):
    """``[(path, items)]``: the images of a split cut into shards (folders: the training
    images permuted; TFDS: consecutive slices of its stored, shuffled order)."""
    count = max(1, min(num_shards, source.num_examples))
    bounds = np.linspace(0, source.num_examples, count + 1).astype(int)
    if tfds:
        return [(out / shard_name(split, i, count), _tfds_slice(tfds, source, bounds[i], bounds[i + 1]))
                for i in range(count)]
    items = [(str(p), int(l)) for p, l in zip(source.paths, source.labels)]
    if split == "train":
        items = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    return [(out / shard_name(split, i, count), items[bounds[i]:bounds[i + 1]]) for i in range(count)]


def estimate_bytes(source, identity, sample=32):
    """Estimated bytes of a split's shards, from encoding an evenly spaced sample (the
    first ``sample`` records of a TFDS split)."""
    import tensorflow as tf

    encode = _encoder(identity["resize_size"], identity["encoding"], identity["jpeg_quality"])
    if source.paths is None:
        datas = (data for data, _ in source.dataset.take(sample))
    else:
        picks = np.unique(np.linspace(0, source.num_examples - 1, min(sample, source.num_examples)).astype(int))
        datas = (tf.io.read_file(source.paths[i]) for i in picks)
    sizes = []
    for data in datas:
        try:
            sizes.append(len(encode(data)))
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
            pass
    return (float(np.mean(sizes)) + RECORD_OVERHEAD) * source.num_examples if sizes else 0.0


def _check_out(out, identity):
    """Refuses an ``out`` whose manifest describes another data set (named)."""
    path = out / datasets.MANIFEST_FILE
    if not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        manifest = {}
    theirs = {k: manifest.get(k) for k in identity}
    if manifest.get("format") != datasets.PREPARED_FORMAT or theirs != identity:
        raise sources.DatasetError(
            f"{path} describes another data set ({theirs.get('source')}, {theirs.get('resize_size')}px, "
            f"{theirs.get('encoding')}); this run would write {identity['source']}, "
            f"{identity['resize_size']}px, {identity['encoding']}. Use another --out."
        )


def prepare(data_dir, out, *, tfds_name=None, manual_dir=None, resize_size=pre_lib.RESIZE_SIZE, shards=16,
            val_shards=4, encoding="jpeg", jpeg_quality=JPEG_QUALITY, class_index="auto", workers=None,
            progress=True):
    """Writes the train and val squares of ``data_dir`` (a folder, or with ``tfds_name`` a
    TFDS data directory) to ``out`` (module docstring); resumes a killed run. Returns the
    manifest (a dict).

    Raises:
        keras_alexnet.sources.DatasetError: ``out`` holds another data set, or bad data
            (as `keras_alexnet.sources.folder_source` and `keras_alexnet.sources.tfds_source`).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}.")
    if min(shards, val_shards) < 1:
        raise ValueError("--shards and --val-shards must be at least 1.")
    out = Path(out)
    tfds = None
    if tfds_name:
        tfds = {"name": tfds_name, "data_dir": str(Path(data_dir).resolve()) if data_dir else None}
        name = f"tfds:{tfds_name}" + (f" in {tfds['data_dir']}" if data_dir else "")
    else:
        name = str(Path(data_dir).resolve())
    identity = _identity(name, resize_size, encoding, jpeg_quality)
    _check_out(out, identity)
    kwargs = dict(tfds_name=tfds_name, manual_dir=manual_dir, class_index=class_index)
    train = datasets.load_source(data_dir, "train", **kwargs)
    if train.element == "square":
        raise sources.DatasetError(f"{data_dir} is prepared already ({datasets.MANIFEST_FILE}): every tool reads "
                                   "it as it is.")
    val = datasets.load_source(data_dir, "val", class_names=train.class_names, **kwargs)
    splits = {"train": (train, shards), "val": (val, val_shards)}
    out.mkdir(parents=True, exist_ok=True)

    plans, done, todo = {}, {}, []
    for split, (source, count) in splits.items():
        plans[split] = _plan(source, split, count, out, tfds=tfds)
        for path, items in plans[split]:
            finished = _finished(path, identity)
            if finished is None:
                todo.append((str(path), items, identity))
            else:
                done[path.name] = finished
    remaining = sum(_count(items) for _, items, _ in todo)
    estimate = sum(estimate_bytes(s, identity) for s, _ in splits.values())
    print(f"Preparing {train.num_examples} train + {val.num_examples} val images of {name} as "
          f"{resize_size}x{resize_size} {encoding} in {out}: about {estimate / 1e9:.2f} GB; "
          f"{len(done)} shard(s) already done, {len(todo)} to write ({remaining} images).", flush=True)

    workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=remaining, unit="img", desc="prepare", file=sys.stderr)
    sizes = {path: _count(items) for path, items, _ in todo}
    if workers == 1:
        results = map(write_shard, todo)
    else:
        # spawn: TensorFlow is not fork-safe once imported.
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap_unordered(write_shard, todo)
    try:
        for result in results:
            done[result["file"]] = result
            if bar is not None:
                bar.update(sizes[str(out / result["file"])])
    finally:
        if workers > 1:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()

    manifest = {"format": datasets.PREPARED_FORMAT, "version": datasets.PREPARED_VERSION, **identity,
                "class_index": train.class_index, "class_names": list(train.class_names), "splits": {}}
    for split, (source, _) in splits.items():
        markers = [done[path.name] for path, _ in plans[split]]
        manifest["splits"][split] = {
            "location": source.location,
            "count": sum(m["records"] for m in markers),
            "classes": sorted({source.class_names[l] for l in _labels(source, markers)}),
            "shards": [{"file": m["file"], "records": m["records"], "bytes": m["bytes"]} for m in markers],
            "skipped": [s for m in markers for s in m["skipped"]],
            "non_image_files": list(source.non_image_files),
        }
    run_files.atomic_write_text(out / datasets.MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _labels(source, markers):
    """The class indices present in a split (a folder's listing, else the shards' markers)."""
    if source.labels is not None:
        return set(source.labels.tolist())
    return {label for m in markers for label in m["labels"]}


def main(argv=None):
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m keras_alexnet.prepare",
                                     description="The 256x256 squares made once, as sharded TFRecords.")
    parser.add_argument("--data-dir", required=True,
                        help="image folder (DIR/train, DIR/val), or the TFDS data directory with --tfds")
    parser.add_argument("--tfds", metavar="NAME", help="a TFDS dataset, e.g. imagenet2012 (never downloaded)")
    parser.add_argument("--manual-dir", help="with --tfds: TFDS manual dir (ILSVRC2012_img_{train,val}.tar), "
                        "used where the dataset is not prepared yet")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--resize-size", type=int, default=pre_lib.RESIZE_SIZE)
    parser.add_argument("--shards", type=int, default=16, help="training shards")
    parser.add_argument("--val-shards", type=int, default=4, help="validation shards")
    parser.add_argument("--encoding", choices=ENCODINGS, default="jpeg")
    parser.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY)
    parser.add_argument("--class-index", choices=("auto", "imagenet", "compact"), default="auto")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        manifest = prepare(args.data_dir, args.out, tfds_name=args.tfds, manual_dir=args.manual_dir,
                           resize_size=args.resize_size, shards=args.shards,
                           val_shards=args.val_shards, encoding=args.encoding, jpeg_quality=args.jpeg_quality,
                           class_index=args.class_index, workers=args.workers, progress=not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, entry in manifest["splits"].items():
        print(f"{split}: {entry['count']} images in {len(entry['shards'])} shard(s), "
              f"{len(entry['skipped'])} skipped")
    return 0


if __name__ == "__main__":
    from keras_alexnet import startup

    startup.own_process()  # the package is imported: freeze it (keras_alexnet/startup.py)
    sys.exit(main())
