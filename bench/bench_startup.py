"""What a command's start costs, with and without the garbage collector's handling in
`keras_alexnet.startup` (the collector paused for TensorFlow's import, then the import's
objects frozen in a process that a command owns).

Every measurement is its own Python process; the rows alternate over ``--repeats`` and the
table gives medians of the process's CPU seconds (user + system, all threads) and its wall
seconds. Rows:

- the import of TensorFlow and Keras alone: as Python does it, with the collector paused,
  and paused then frozen (the peers: no keras_alexnet code);
- ``import keras_alexnet.training`` as shipped (paused; a library import freezes nothing);
- a tiny ``train.py`` run (the ``tiny`` preset at 67 px, 2 epochs of 2 steps, float32, the
  tests' size: start-up dominates it): as shipped (``python train.py``, which freezes);
  ``main()`` called by another program (paused, not frozen); and with the collector
  left alone (``gc.disable`` made a no-op before the package's import: the code before
  `keras_alexnet.startup`); and as shipped but with AutoGraph converting the input
  pipeline's functions (`keras_alexnet.images.no_autograph` made the identity).

Needs TensorFlow. Usage: ``python bench/bench_startup.py [--repeats 3]``. Writes
bench/results/startup.json and prints a table.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import _common  # noqa: E402

TINY = ["--preset", "tiny", "--resize-size", "72", "--crop-size", "67", "--fc-units", "32", "--batch-size", "8",
        "--quiet", "--max-steps-per-epoch", "2", "--precision", "float32", "--epochs", "2"]
CALLED = (f"import sys, runpy; sys.path.insert(0, {str(REPO)!r}); "
          f"main = runpy.run_path({str(REPO / 'train.py')!r})['main']; sys.exit(main(sys.argv[1:]))")
ROWS = {
    "import tensorflow, keras": ["-c", "import tensorflow, keras"],
    "  collector paused": ["-c", "import gc; gc.disable(); import tensorflow, keras; gc.enable()"],
    "  paused, then frozen": ["-c", "import gc; gc.disable(); import tensorflow, keras; gc.freeze(); gc.enable()"],
    "import keras_alexnet.training (as shipped)": ["-c", "import keras_alexnet.training"],
    "tiny train.py run (as shipped: paused, frozen)": [str(REPO / "train.py")],
    "  train.py's main() called by a program (paused)": ["-c", CALLED],
    "  collector left alone (before keras_alexnet.startup)": ["-c", "import gc; gc.disable = lambda: None; " + CALLED],
    "  AutoGraph on the pipeline's functions (before images.no_autograph)": [
        "-c", "import keras_alexnet.images as i, sys; assert 'keras_alexnet.data' not in sys.modules; "
              "i.no_autograph = lambda fn: fn; " + CALLED.replace("main(sys.argv[1:])", "main(sys.argv[1:], own_process=True)")],
}


# The rows that are a tiny train.py run (the others only import).
TRAINING_ROWS = [name for name in ROWS if "train.py" in name or "left alone" in name or "AutoGraph" in name]


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(argv, env):
    cpu, wall = children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return children_cpu() - cpu, time.perf_counter() - wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "startup.json"))
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from keras_alexnet import synthetic  # imports TensorFlow here; only the child processes are measured

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    info = _common.machine("tensorflow", "keras", "numpy")
    runs = {name: [] for name in ROWS}
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        data = synthetic.make_dataset(Path(tmp) / "data", num_classes=3, train_per_class=8, val_per_class=4,
                                      size=64)
        for repeat in range(args.repeats):
            for i, (name, argv) in enumerate(ROWS.items()):
                if name in TRAINING_ROWS:
                    argv = [*argv, "--data-dir", str(data), "--output-dir", f"{tmp}/run{repeat}_{i}", *TINY]
                cpu, wall = measure(argv, env)
                runs[name].append({"cpu_s": cpu, "wall_s": wall})
                print(f"repeat {repeat + 1}/{args.repeats}  {name.strip():55s} {cpu:5.2f} s CPU  {wall:5.2f} s",
                      flush=True)
    rows = [{"name": name, "runs": r, "cpu_s": statistics.median(x["cpu_s"] for x in r),
             "wall_s": statistics.median(x["wall_s"] for x in r)} for name, r in runs.items()]
    Path(args.out).write_text(json.dumps({"machine": info, "repeats": args.repeats, "rows": rows}, indent=1) + "\n")
    print(f"\n{'':70s} CPU s   wall s   (medians of {args.repeats}; {info['cpu_model']}, "
          f"{info['cores']} cores, bf16: {info['bf16_hardware']})")
    for row in rows:
        print(f"{row['name']:70s} {row['cpu_s']:5.2f}   {row['wall_s']:5.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
