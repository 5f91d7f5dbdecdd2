"""Does training from prepared shards learn what training from the raw folders learns?

`python -m keras_alexnet.prepare` stores each image once as its resized square; the training
pipeline then crops, flips and adds colour noise as it does for a raw folder. This trains the
same recipe, seeds 0, 1, 2, from a raw Imagenette subset and from the same images prepared,
and compares the validation errors (the issue asks for the same error within run-to-run
noise). Toy size, so that six runs fit a 2-core machine: the `tiny` preset (76 px squares,
67 px crops, fc 512, batch 16), ``--per-class`` training images of each of the 10 classes
(Imagenette's 224 px photos, ``../shared/data/imagenette``), all 1,966 validation images,
``--epochs`` epochs, float32; prepared at ``--resize-size 76`` in the default encoding (JPEG
q95 4:4:4).

Needs TensorFlow and the shared photos. Usage::

    python bench/bench_prepared_vs_raw.py [--per-class 100] [--epochs 6] [--seeds 0 1 2]

Writes bench/results/prepared_vs_raw.json and prints a table.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import _common  # noqa: E402
from keras_alexnet import prepare, recipes, run_files, sources, training  # noqa: E402

IMAGENETTE = REPO.parent / "shared" / "data" / "imagenette"


def subset(root, per_class):
    """``root/train``: the first ``per_class`` photos of each class (symlinks); ``root/val``: all."""
    train = sources.folder_source(IMAGENETTE, "train")
    taken = {}
    for path, label in zip(train.paths, train.labels):
        name = train.class_names[label]
        if taken.get(name, 0) < per_class:
            taken[name] = taken.get(name, 0) + 1
            (root / "train" / name).mkdir(parents=True, exist_ok=True)
            (root / "train" / name / Path(path).name).symlink_to(path)
    (root / "val").symlink_to(IMAGENETTE / "val")
    return root


def train_run(data_dir, out, seed, epochs):
    recipe = recipes.resolve("tiny", {"epochs": epochs, "seed": seed})
    data = training.DataSpec(str(data_dir), class_index="compact").load()
    settings = training.RunSettings(output_dir=str(out), verbose=0, precision="float32")
    start = time.perf_counter()
    training.train(recipe, data, settings, preset="tiny")
    metrics = run_files.read_metrics(out / run_files.METRICS_FILE)
    return {"seed": seed, "val_top1_error": [float(e) for e in metrics["val_top1_error"]],
            "final": float(metrics["val_top1_error"][-1]), "best": float(min(metrics["val_top1_error"])),
            "seconds": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "prepared_vs_raw.json"))
    args = parser.parse_args()
    if not IMAGENETTE.is_dir():
        sys.exit(f"needs Imagenette at {IMAGENETTE}")

    info = _common.machine("tensorflow", "numpy")
    work = Path(tempfile.mkdtemp(prefix="prepared_vs_raw_"))
    results = {"raw folder": [], "prepared": []}
    try:
        raw = subset(work / "raw", args.per_class)
        prepare.prepare(raw, work / "prepared", resize_size=76, class_index="compact", workers=1, progress=False)
        for seed in args.seeds:
            for name, data_dir in (("raw folder", raw), ("prepared", work / "prepared")):
                r = train_run(data_dir, work / f"run-{name.split()[0]}-{seed}", seed, args.epochs)
                results[name].append(r)
                print(f"seed {seed} {name:10s} validation top-1 error by epoch "
                      f"{' '.join(f'{e:.3f}' for e in r['val_top1_error'])} ({r['seconds']:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for name, runs in results.items():
        finals = [r["final"] for r in runs]
        summary[name] = {"final_mean": statistics.mean(finals), "final_stdev": statistics.stdev(finals),
                         "finals": finals, "best": [r["best"] for r in runs]}
    a, b = summary["raw folder"], summary["prepared"]
    # Within run-to-run noise: the difference of the means against the spread of one mean.
    noise = ((a["final_stdev"] ** 2 + b["final_stdev"] ** 2) / len(args.seeds)) ** 0.5
    verdict = {"difference": b["final_mean"] - a["final_mean"], "standard_error": noise,
               "within_2_standard_errors": abs(b["final_mean"] - a["final_mean"]) <= 2 * noise}
    print(f"\nfinal validation top-1 error after {args.epochs} epochs, seeds {args.seeds}:")
    for name, s in summary.items():
        print(f"  {name:10s} {' '.join(f'{e:.3f}' for e in s['finals'])}  mean {s['final_mean']:.3f} "
              f"sd {s['final_stdev']:.3f}")
    print(f"  prepared - raw: {verdict['difference']:+.3f} (standard error {noise:.3f})")

    info["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "the tiny recipe trained from a raw Imagenette subset and from the same images prepared "
                     "(python -m keras_alexnet.prepare --resize-size 76), same seeds",
        "machine": info, "per_class": args.per_class, "epochs": args.epochs, "seeds": args.seeds,
        "summary": summary, "verdict": verdict, "runs": results,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
