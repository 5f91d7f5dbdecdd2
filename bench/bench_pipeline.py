"""Training input pipeline speed: `keras_alexnet.data.training_dataset` against PIL + NumPy.

Both produce the paper's training batches from the real JPEGs in ../shared/data
(Imagenette train + the ImageNet sample, shuffled together): decode, shorter side to
256, central 256x256, random 227x227 crop, random flip, mean image subtracted at the
crop window. The tf.data pipeline also adds the PCA colour noise (one small op per
batch); the peer, the obvious hand-written alternative, is a Python generator with
Pillow (bilinear resize, which Pillow antialiases when shrinking, like TF's
``antialias=True``) and NumPy, batching 128 images.

Three variants, alternated for a few rounds in one process (the machine is shared, so
only same-run ratios mean much):

- ``tf.data``: default threading (all cores);
- ``tf.data, 1 thread``: a private thread pool of one thread;
- ``PIL + NumPy``: one Python thread.

For each run it records wall-clock images/s and the process CPU time per image
(user + sys over all threads), whose inverse is images/s per busy core: a measure that
does not depend on how many cores the run got from the other tenants.

Usage::

    python bench/bench_pipeline.py [--images 1280] [--rounds 3]

Writes bench/results/pipeline.json and prints a table.
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import _common  # noqa: E402
from _common import cpu_seconds  # noqa: E402
from keras_alexnet import data, preprocessing as pre_lib, sources  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
BATCH = 128
RESIZE, CROP = pre_lib.RESIZE_SIZE, pre_lib.CROP_SIZE


def combined_source():
    """Imagenette train and the ImageNet sample as one source (ImageNet indices)."""
    parts = [
        sources.folder_source(SHARED / "imagenette" / "train"),
        sources.folder_source(SHARED / "imagenet-sample" / "val", None),
    ]
    paths = np.concatenate([p.paths for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    return dataclasses.replace(
        parts[0],
        location="imagenette/train + imagenet-sample/val",
        paths=paths,
        labels=labels,
        num_examples=len(paths),
        dataset=tf.data.Dataset.from_tensor_slices((paths, labels)),
    )


class MeanOnly:
    """Statistics stand-in: a mean image, ImageNet PCA (same cost as real stats)."""

    def __init__(self, mean_image):
        from keras_alexnet.layers import IMAGENET_EIGENVALUES, IMAGENET_EIGENVECTORS

        self.mean_image = mean_image
        self.channel_mean = mean_image.mean(axis=(0, 1))
        self.pca_eigenvalues = IMAGENET_EIGENVALUES
        self.eigenvectors = IMAGENET_EIGENVECTORS


def tf_batches(source, stats, seed, threads=None, deterministic=True):
    """``deterministic=False``: tf.data may hand out elements in the order they are ready
    (`tf.data.Options.deterministic`), what the package's pipeline gives up for
    reproducible batches."""
    ds = data.training_dataset(source, BATCH, stats=stats, seed=seed, drop_remainder=True)
    options = tf.data.Options()
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    if not deterministic:
        options.deterministic = False
    ds = ds.with_options(options)
    for images, labels in ds:
        yield images.numpy(), labels.numpy()


def pil_batches(source, mean_image, seed):
    """The hand-written peer: PIL decode/resize, NumPy crops, flips and mean."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(source.num_examples)
    images, labels = [], []
    for index in order:
        with Image.open(source.paths[index]) as image:
            image = image.convert("RGB")
            width, height = image.size
            scale = RESIZE / min(width, height)
            size = (max(RESIZE, round(width * scale)), max(RESIZE, round(height * scale)))
            if size != image.size:
                image = image.resize(size, Image.BILINEAR)
            left, top = (size[0] - RESIZE) // 2, (size[1] - RESIZE) // 2
            square = np.asarray(image.crop((left, top, left + RESIZE, top + RESIZE)), np.float32)
        y, x = rng.integers(0, RESIZE - CROP + 1, size=2)
        crop = square[y : y + CROP, x : x + CROP] - mean_image[y : y + CROP, x : x + CROP]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        images.append(crop)
        labels.append(source.labels[index])
        if len(images) == BATCH:
            yield np.stack(images), np.array(labels)
            images, labels = [], []


def measure(batches, num_images):
    """Images/s and CPU ms/image over ``num_images``, after one warm-up batch."""
    iterator = iter(batches)
    next(iterator)
    wall, cpu, count = time.perf_counter(), cpu_seconds(), 0
    while count < num_images:
        images, _ = next(iterator)
        assert images.shape == (BATCH, CROP, CROP, 3) and images.dtype == np.float32
        count += len(images)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    iterator.close()
    return {"images": count, "seconds": wall, "images_per_s": count / wall,
            "cpu_ms_per_image": 1000 * cpu / count}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1280, help="images timed per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "pipeline.json"))
    args = parser.parse_args()

    info = _common.machine("tensorflow", "numpy", "pillow")
    source = combined_source()
    mean_image = np.random.default_rng(0).uniform(100, 130, (RESIZE, RESIZE, 3)).astype(
        np.float32)
    stats = MeanOnly(mean_image)
    variants = {
        "tf.data": lambda seed: tf_batches(source, stats, seed),
        "tf.data, 1 thread": lambda seed: tf_batches(source, stats, seed, threads=1),
        "PIL + NumPy": lambda seed: pil_batches(source, mean_image, seed),
    }
    runs = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, make in variants.items():
            result = measure(make(round_), args.images)
            runs[name].append(result)
            print(f"round {round_ + 1} {name:18s} {result['images_per_s']:8.1f} img/s "
                  f"{result['cpu_ms_per_image']:6.2f} CPU ms/img", flush=True)

    summary = {}
    for name, results in runs.items():
        rate = statistics.median(r["images_per_s"] for r in results)
        cpu_ms = statistics.median(r["cpu_ms_per_image"] for r in results)
        summary[name] = {"images_per_s": rate, "cpu_ms_per_image": cpu_ms,
                         "images_per_s_per_busy_core": 1000 / cpu_ms}
    peer = summary["PIL + NumPy"]
    for name in summary:
        summary[name]["wall_ratio_vs_pil"] = summary[name]["images_per_s"] / peer["images_per_s"]
        summary[name]["per_core_ratio_vs_pil"] = (
            peer["cpu_ms_per_image"] / summary[name]["cpu_ms_per_image"])

    print(f"\n{source.num_examples} JPEGs ({source.location}), batch {BATCH}, "
          f"{args.images} images x {args.rounds} rounds, medians; {info['cpu_model']}, "
          f"{info['cores_available']} cores, TF {info['tensorflow']}")
    print(f"{'pipeline':20s} {'img/s':>8s} {'x PIL':>6s} {'CPU ms/img':>11s} "
          f"{'img/s/core':>11s} {'x PIL':>6s}")
    for name, s in summary.items():
        print(f"{name:20s} {s['images_per_s']:8.1f} {s['wall_ratio_vs_pil']:6.2f} "
              f"{s['cpu_ms_per_image']:11.2f} {s['images_per_s_per_busy_core']:11.1f} "
              f"{s['per_core_ratio_vs_pil']:6.2f}")

    info["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "training input pipeline: decode, resize 256, centre 256, random crop "
                     "227, flip, mean image; tf.data also adds PCA colour noise",
        "machine": info,
        "data": {"location": source.location, "files": source.num_examples},
        "batch_size": BATCH, "images_per_run": args.images, "rounds": args.rounds,
        "summary": summary, "runs": runs,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
