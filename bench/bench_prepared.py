"""The training input from prepared shards against full-size folders and a PIL peer.

Issue: the paper down-sampled ImageNet to 256x256 once (§2); decoding full-size JPEGs every
epoch costs the input pipeline most of its time. This measures, side by side in one process,
images/s per busy core (1000 / CPU ms per image: independent of how many cores the run got)
of `keras_alexnet.data.training_dataset` (random 227 crop, flip, mean image, PCA noise,
batch 128) reading:

- ``raw folder``: full-size ImageNet photos (``../shared/data/imagenet-sample/val``, 100
  photos of median 500x375, repeated to ``--repeat`` x 100 files by symlinks);
- ``prepared``: the same photos after ``python -m keras_alexnet.prepare`` (its default
  encoding, JPEG q95 4:4:4 squares of 256);
- ``prepared, any order``: the same with ``tf.data.Options.deterministic = False`` (elements
  handed out as they are ready): what the package's deterministic order costs;
- ``PIL + NumPy``: the hand-written peer of ``bench/bench_pipeline.py`` reading the same
  256x256 squares as JPEG files (q95, written once here; no resize left to do).

It also times ``prepare`` itself, one worker in this process (CPU per image of decoding,
resizing and encoding; ``--workers`` runs one such process per core).

Needs TensorFlow, Pillow and the shared photos. Usage::

    python bench/bench_prepared.py [--repeat 9] [--images 1280] [--rounds 3]

Writes bench/results/prepared_pipeline.json and prints a table.
"""

import argparse
import dataclasses
import io
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import _common  # noqa: E402
from bench_pipeline import BATCH, RESIZE, MeanOnly, measure, pil_batches, tf_batches  # noqa: E402
from keras_alexnet import datasets, prepare, sources  # noqa: E402

PHOTOS = REPO.parent / "shared" / "data" / "imagenet-sample" / "val"


def repeated_folder(root, repeat):
    """``root/train/<wnid>/<k>_<name>``: the sample photos ``repeat`` times (symlinks), and a
    one-photo-per-class ``val`` (prepare wants both splits)."""
    src = sources.folder_source(PHOTOS, None)
    for split, times in (("train", repeat), ("val", 1)):
        for path, label in zip(src.paths, src.labels):
            folder = root / split / src.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(times):
                (folder / f"{k}_{Path(path).name}").symlink_to(path)
    return root


def children_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def square_jpegs(prepared_dir, out):
    """The prepared training squares written back as JPEG files (q95 4:4:4) for the peer."""
    source = datasets.prepared_source(prepared_dir, "train")
    paths, labels = [], []
    for i, (encoded, label) in enumerate(source.dataset):
        image = Image.open(io.BytesIO(encoded.numpy())).convert("RGB")
        path = out / f"{i:06d}.jpg"
        image.save(path, quality=95, subsampling=0)
        paths.append(str(path))
        labels.append(int(label))
    return dataclasses.replace(source, paths=np.array(paths, object), labels=np.array(labels, np.int32),
                               element="path")


def epochs(make):
    """Batches of ``make(seed)`` for seed 0, 1, ...: as many passes as the timing needs."""
    def batches(seed):
        for k in range(1000):
            yield from make(seed * 1000 + k)
    return batches


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="copies of the 100 photos in train")
    parser.add_argument("--images", type=int, default=1280, help="images timed per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "prepared_pipeline.json"))
    args = parser.parse_args()
    if not PHOTOS.is_dir():
        sys.exit(f"needs the sample photos at {PHOTOS}")

    info = _common.machine("tensorflow", "numpy", "pillow")
    work = Path(tempfile.mkdtemp(prefix="bench_prepared_"))
    try:
        folder = repeated_folder(work / "raw", args.repeat)
        wall, cpu, cpu_children = time.perf_counter(), _common.cpu_seconds(), children_cpu_seconds()
        # One worker, in this process: the cost per image of decode, resize and encode, without
        # the start-up of a pool's processes (each imports TensorFlow), which a real data set
        # amortises over a million images.
        prepare.prepare(folder, work / "prepared", class_index="compact", workers=1, progress=False)
        wall = time.perf_counter() - wall
        cpu = _common.cpu_seconds() - cpu + children_cpu_seconds() - cpu_children
        manifest = datasets.read_manifest(work / "prepared")
        count = sum(s["count"] for s in manifest["splits"].values())
        prepare_result = {"images": count, "seconds": wall, "images_per_s": count / wall,
                          "cpu_ms_per_image": 1000 * cpu / count,
                          "images_per_s_per_busy_core": count / cpu,
                          "bytes_per_image": sum(p.stat().st_size for p in (work / "prepared").glob("*.tfrecord")) / count}
        print(f"prepare: {count} images in {wall:.1f} s, {prepare_result['images_per_s_per_busy_core']:.0f} "
              f"img/s per busy core", flush=True)

        raw = sources.folder_source(folder, "train", class_index="compact")
        prepared = datasets.prepared_source(work / "prepared", "train")
        (work / "squares").mkdir()
        squares = square_jpegs(work / "prepared", work / "squares")
        mean_image = np.random.default_rng(0).uniform(100, 130, (RESIZE, RESIZE, 3)).astype(np.float32)
        stats = MeanOnly(mean_image)
        variants = {
            "raw folder (tf.data)": lambda seed: tf_batches(raw, stats, seed),
            "prepared (tf.data)": lambda seed: tf_batches(prepared, stats, seed),
            "prepared, any order": lambda seed: tf_batches(prepared, stats, seed, deterministic=False),
            "PIL + NumPy, 256 JPEGs": lambda seed: pil_batches(squares, mean_image, seed),
        }
        variants = {name: epochs(make) for name, make in variants.items()}
        runs = {name: [] for name in variants}
        for round_ in range(args.rounds):
            for name, make in variants.items():
                result = measure(make(round_), args.images)
                runs[name].append(result)
                print(f"round {round_ + 1} {name:24s} {result['images_per_s']:8.1f} img/s "
                      f"{result['cpu_ms_per_image']:6.2f} CPU ms/img", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for name, results in runs.items():
        cpu_ms = statistics.median(r["cpu_ms_per_image"] for r in results)
        summary[name] = {"images_per_s": statistics.median(r["images_per_s"] for r in results),
                         "cpu_ms_per_image": cpu_ms, "images_per_s_per_busy_core": 1000 / cpu_ms}
    base = summary["raw folder (tf.data)"]["images_per_s_per_busy_core"]
    peer = summary["PIL + NumPy, 256 JPEGs"]["images_per_s_per_busy_core"]
    for s in summary.values():
        s["per_core_x_raw"] = s["images_per_s_per_busy_core"] / base
        s["per_core_x_pil"] = s["images_per_s_per_busy_core"] / peer

    print(f"\n{raw.num_examples} training files (100 photos x {args.repeat}), batch {BATCH}, "
          f"{args.images} images x {args.rounds} rounds, medians; {info['cpu_model']}, "
          f"{info['cores_available']} cores, TF {info['tensorflow']}")
    print(f"{'pipeline':26s} {'img/s':>8s} {'CPU ms/img':>11s} {'img/s/core':>11s} {'x raw':>6s} {'x PIL':>6s}")
    for name, s in summary.items():
        print(f"{name:26s} {s['images_per_s']:8.1f} {s['cpu_ms_per_image']:11.2f} "
              f"{s['images_per_s_per_busy_core']:11.1f} {s['per_core_x_raw']:6.2f} {s['per_core_x_pil']:6.2f}")

    info["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "training input from full-size folders, prepared shards (python -m "
                     "keras_alexnet.prepare, its default encoding) and a PIL + NumPy peer on the same "
                     "256x256 squares as JPEG files: random crop 227, flip, mean image (tf.data: + PCA noise)",
        "machine": info, "data": {"photos": str(PHOTOS), "repeat": args.repeat, "files": raw.num_examples},
        "prepare": prepare_result, "encoding": manifest["encoding"],
        "batch_size": BATCH, "images_per_run": args.images, "rounds": args.rounds,
        "summary": summary, "runs": runs,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
