"""How to store the prepared 256x256 squares (`keras_alexnet.prepare`): JPEG, PNG or raw.

For every full-size photo of ../shared/data/imagenet-sample/val (100 photos, one per
class; the folder is only listed, no reference labels are read) it makes the square
exactly as the on-the-fly pipeline does (`keras_alexnet.images.load_image`: shorter side
to 256, central square, float32), rounds it to uint8 (what `prepare` stores) and encodes
it three ways:

- ``jpeg95``: `tf.io.encode_jpeg` at quality 95 (4:2:0 chroma subsampling, TF's default);
- ``jpeg95_444``: the same without chroma subsampling (4:4:4);
- ``png``: `tf.io.encode_png` (lossless);
- ``raw``: the 196,608 uint8 bytes.

For each it records the bytes per image, the decode time per image (one thread; the
median over ``--repeats`` decodes of every image: `tf.io.decode_jpeg` / `decode_png` /
`decode_raw` + reshape, eagerly, each call inside one `tf.function`), and the max / mean
absolute difference of the decoded square to the on-the-fly float32 square (for the
lossless ones this is the uint8 rounding, at most 0.5).

Usage::

    python bench/bench_prepare_encoding.py [--dir ../shared/data/imagenet-sample/val] [--repeats 5]

Writes bench/results/prepare_encoding.json and prints a table.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

import _common
from keras_alexnet import images as image_lib, sources

HERE = Path(__file__).resolve().parent


def encoders(size):
    return {
        "jpeg95": (lambda sq: tf.io.encode_jpeg(sq, quality=95),
                   tf.function(lambda b: tf.io.decode_jpeg(b, channels=3))),
        "jpeg95_444": (lambda sq: tf.io.encode_jpeg(sq, quality=95, chroma_downsampling=False),
                       tf.function(lambda b: tf.io.decode_jpeg(b, channels=3))),
        "png": (lambda sq: tf.io.encode_png(sq),
                tf.function(lambda b: tf.io.decode_png(b, channels=3))),
        "raw": (lambda sq: tf.constant(sq.numpy().tobytes()),
                tf.function(lambda b: tf.reshape(tf.io.decode_raw(b, tf.uint8), [size, size, 3]))),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(HERE.parents[1] / "shared/data/imagenet-sample/val"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results/prepare_encoding.json"))
    args = parser.parse_args()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)

    files = [str(p) for p in sources.list_images(args.dir)]
    squares, shapes = [], []
    for path in files:
        encoded = tf.io.read_file(path)
        shapes.append(tuple(int(s) for s in image_lib.image_size(encoded)))
        squares.append(image_lib.load_image(encoded, args.size, from_path=False))
    results = {}
    for name, (encode, decode) in encoders(args.size).items():
        blobs = [encode(tf.cast(tf.round(sq), tf.uint8)) for sq in squares]
        decode(blobs[0])  # trace once
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for b in blobs:
                decode(b)
            times.append((time.perf_counter() - start) / len(blobs))
        diffs = [np.abs(decode(b).numpy().astype(np.float32) - sq.numpy()) for b, sq in zip(blobs, squares)]
        sizes = [len(b.numpy()) for b in blobs]
        results[name] = {
            "bytes_per_image_mean": float(np.mean(sizes)),
            "bytes_per_image_median": float(np.median(sizes)),
            "decode_ms_per_image": 1000 * float(np.median(times)),
            "max_abs_diff": float(max(d.max() for d in diffs)),
            "mean_abs_diff": float(np.mean([d.mean() for d in diffs])),
        }
    report = {
        "machine": _common.machine("tensorflow"),
        "images": len(files),
        "median_source_shape_hw": [float(np.median([s[0] for s in shapes])),
                                   float(np.median([s[1] for s in shapes]))],
        "size": args.size,
        "threads": 1,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(files)} photos, median {report['median_source_shape_hw']} (h, w), squares {args.size}")
    print(f"{'encoding':8} {'KB/img':>8} {'decode ms':>10} {'max|d|':>7} {'mean|d|':>8}")
    for name, r in results.items():
        print(f"{name:8} {r['bytes_per_image_mean'] / 1000:8.1f} {r['decode_ms_per_image']:10.3f} "
              f"{r['max_abs_diff']:7.2f} {r['mean_abs_diff']:8.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
