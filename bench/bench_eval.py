"""Evaluation speed: images per second with the centre crop and with the paper's ten crops.

What ``python evaluate.py --top5 [--ten-crop]`` runs, timed end to end through
`keras_alexnet.evaluation.run_evaluation`: the full-size network (227x227 crops, 1000
classes, fc 4096, random weights, the paper's two towers) on real JPEGs from
``../shared/data/imagenette/val`` (ImageNet photos; their wnid folders give ImageNet
indices), a mean image subtracted, batches of 32 images (320 crops with ``--ten-crop``).
Each timed run includes what a user waits for: the input pipeline (decode, shorter side
256, central square, crops, mean), tracing the predict function once, the forward
passes and the counting. A third row, ``network only``, is the forward pass alone on
crops already in memory (steady state, after a warm-up), the ceiling the other two
approach.

The variants alternate for a few rounds in one process (the machine is shared: compare
rows of the same run, not runs). For each run it records wall-clock images/s and the
process CPU time per image (user + sys, all threads); ``images/s per busy core`` is its
inverse, which depends less on what the other tenants take. Ten crops cost about ten
forward passes per image, so their images/s should be about a tenth of the centre
crop's once the network dominates.

Usage::

    python bench/bench_eval.py [--images 320] [--rounds 3] [--batch-size 32]

Writes bench/results/eval_speed.json and prints a table.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import _common  # noqa: E402
from _common import cpu_seconds  # noqa: E402
import keras_alexnet  # noqa: E402
from keras_alexnet import evaluation, preprocessing as pre_lib, runs, sources  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
VAL = SHARED / "imagenette" / "val"
# The ImageNet mean pixel (RGB): a mean image to subtract, so that the pipeline does the
# work evaluate.py does with a trained run's stats.npz.
IMAGENET_RGB_MEAN = (123.68, 116.779, 103.939)


def spread_subset(source, count):
    """``count`` files evenly spaced over the (class-sorted) listing: every class in."""
    if count >= source.num_examples:
        return source
    keep = np.unique(np.linspace(0, source.num_examples - 1, count).round().astype(int))
    paths, labels = source.paths[keep], source.labels[keep]
    return dataclasses.replace(
        source, paths=paths, labels=labels, num_examples=len(paths),
        dataset=tf.data.Dataset.from_tensor_slices((paths, labels)))


def fresh_run(model, class_index):
    """A `keras_alexnet.runs.Run` around an in-memory model (no run directory): 227 crops
    of a 256 square, the ImageNet mean pixel subtracted as a 256x256 mean image."""
    mean_image = np.broadcast_to(np.float32(IMAGENET_RGB_MEAN), (256, 256, 3)).copy()
    preprocessing = pre_lib.Preprocessing(crop_size=227, resize_size=256, mean_mode="image",
                                       mean=mean_image, source="the ImageNet mean pixel")
    run = runs.Run(path=None, model_path=Path("<in-memory>"), config={}, kind="model",
                   preprocessing=preprocessing, class_names=None, class_index=class_index,
                   num_classes=int(model.output_shape[-1]))
    run.__dict__["model"] = model  # Run.model is a cached property: no file to load
    return run


def timed(fn, images):
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return {"images": images, "seconds": wall, "images_per_s": images / wall,
            "cpu_ms_per_image": 1000 * cpu / images}, result


def machine():
    info = _common.machine("tensorflow", "keras", "keras_alexnet", "numpy")
    info["onednn"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")
    return info


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320, help="validation images per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (evaluate.py's default)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "eval_speed.json"))
    args = parser.parse_args()
    if not VAL.is_dir():
        sys.exit(f"bench_eval.py: {VAL} not found (the Imagenette validation JPEGs)")

    info = machine()
    full = sources.folder_source(VAL, None)
    source = spread_subset(full, args.images)
    model = keras_alexnet.AlexNet(seed=0)  # 227x227, 1000 classes, two towers
    fresh = fresh_run(model, source.class_index)
    print(f"{source.num_examples} of {full.num_examples} JPEGs in {VAL} ({source.class_index} indices, "
          f"{source.num_classes} classes); AlexNet {model.count_params():,} parameters; batch "
          f"{args.batch_size}; load average {info['load_average_at_start'][0]:.1f}", flush=True)

    def run(crops, src=source):
        return evaluation.run_evaluation(fresh, src, crops=crops, batch_size=args.batch_size,
                                         progress=False)

    crops_in_memory = tf.constant(np.random.default_rng(0).normal(
        0, 60, (args.batch_size, 227, 227, 3)).astype(np.float32))
    forward = evaluation.make_predict_fn(model, "center")

    def network_only(batches):
        for _ in range(batches):
            forward(crops_in_memory).numpy()

    # Warm-up (not timed): oneDNN primitives, file cache, one pass of each path.
    warm = spread_subset(full, 2 * args.batch_size)
    run("center", warm), run("ten", warm), network_only(2)

    variants = {
        "center crop": lambda: run("center"),
        "ten crops": lambda: run("ten"),
        "network only (centre, in memory)": lambda: network_only(
            max(1, args.images // args.batch_size)),
    }
    network_images = max(1, args.images // args.batch_size) * args.batch_size
    runs = {name: [] for name in variants}
    errors = {}
    for round_ in range(args.rounds):
        for name, fn in variants.items():
            count = network_images if name.startswith("network") else source.num_examples
            result, evaluated = timed(fn, count)
            if isinstance(evaluated, dict):
                assert evaluated["images"] == source.num_examples and evaluated["skipped"] == 0
                errors[name] = {k: evaluated[k] for k in ("top1_error", "top5_error")}
            runs[name].append(result)
            print(f"round {round_ + 1} {name:34s} {result['images_per_s']:7.1f} img/s "
                  f"{result['cpu_ms_per_image']:8.1f} CPU ms/img", flush=True)

    summary = {}
    for name, results in runs.items():
        rate = statistics.median(r["images_per_s"] for r in results)
        cpu_ms = statistics.median(r["cpu_ms_per_image"] for r in results)
        summary[name] = {"images_per_s": rate, "crops_per_s": rate * (10 if name == "ten crops" else 1),
                         "cpu_ms_per_image": cpu_ms, "images_per_s_per_busy_core": 1000 / cpu_ms,
                         "min_images_per_s": min(r["images_per_s"] for r in results),
                         "max_images_per_s": max(r["images_per_s"] for r in results)}
    centre = summary["center crop"]["images_per_s"]
    for name in summary:
        summary[name]["ratio_to_center"] = summary[name]["images_per_s"] / centre

    info["load_average_at_end"] = os.getloadavg()
    print(f"\nEvaluation speed, AlexNet 227 / 1000 classes, random weights, {source.num_examples} "
          f"Imagenette val JPEGs, batch {args.batch_size}, median of {args.rounds} alternating rounds; "
          f"{info['cpu_model']}, {info['cores_available']} cores, TF {info['tensorflow']}, load average "
          f"{info['load_average_at_start'][0]:.1f} -> {info['load_average_at_end'][0]:.1f}")
    print(f"{'':34s} {'img/s':>7s} {'crops/s':>8s} {'x centre':>8s} {'CPU ms/img':>11s} {'img/s/core':>11s}")
    for name, s in summary.items():
        print(f"{name:34s} {s['images_per_s']:7.1f} {s['crops_per_s']:8.1f} {s['ratio_to_center']:8.2f} "
              f"{s['cpu_ms_per_image']:11.1f} {s['images_per_s_per_busy_core']:11.1f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "evaluate.py end to end (pipeline + forward + counting) with the centre crop and "
                     "the paper's ten crops; plus the forward pass alone on in-memory crops",
        "machine": info,
        "model": {"input": [227, 227, 3], "classes": 1000, "parameters": model.count_params(),
                  "weights": "random (seed 0)", "grouping": "towers"},
        "data": {"location": str(VAL), "images": source.num_examples, "listed": full.num_examples,
                 "class_index": source.class_index},
        "batch_size": args.batch_size, "rounds": args.rounds,
        "summary": summary, "runs": runs,
        "errors_of_random_weights": errors,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
