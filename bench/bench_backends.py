"""Training speed of keras_alexnet on each Keras backend (TensorFlow, JAX, PyTorch), against
the same network in plain PyTorch; and the LRN's gradient on JAX and PyTorch.

    python bench/bench_backends.py                  # full run: 2 interleaved repeats
    python bench/bench_backends.py --repeats 3      # more repeats (a shared machine)
    python bench/bench_backends.py --quick          # smoke test: 1 repeat, 2 timed steps
    python bench/bench_backends.py --quick --batch 8 --out /tmp/backends.json
    python bench/bench_backends.py --only keras_jax_towers,torch_plain
    python bench/bench_backends.py --table          # print the README tables of the saved run
    python bench/bench_backends.py --list           # the config ids

What it measures, batch 32 (``--batch``), fp32, on the synthetic batch every benchmark
worker uses (NumPy seed 0):

- ``keras_tf_towers``, ``keras_jax_towers``, ``keras_jax_grouped``,
  ``keras_torch_towers``: images/s of ``model.train_on_batch`` on
  ``keras_alexnet.AlexNet`` (the paper network, 227x227, 60,965,224 parameters; SGD with
  momentum 0.9, sparse softmax cross-entropy, ``jit_compile="auto"``: Keras' own choice
  per backend, reported), each in its own process (bench/_backend_worker.py) with
  ``KERAS_BACKEND`` set;
- ``torch_plain``: the same network written in PyTorch (bench/torch_alexnet.py, through
  bench/_torch_worker.py: NCHW, eager, same optimiser and loss). That worker runs on the
  **CPU only** (it has no device option): on a GPU machine its row is a CPU number, and
  the table marks every ratio taken across devices;
- ``lrn_jax``, ``lrn_torch``: forward + backward of the LRN on the shapes of lrn1
  ``(batch, 55, 55, 96)`` and lrn2 ``(batch, 27, 27, 256)``, groups 2, with the paper's
  constants: the library's ``keras.ops`` version (its hand-written gradient through
  ``keras.ops.custom_gradient``, what the layer uses off TensorFlow) against the same
  forward differentiated by the backend's autodiff (both asserted equal before timing).
  The layer takes the hand-written gradient because this measured it faster.

How: one process per measurement (a backend is fixed once Keras is imported), the
configs alternating within each repeat and their order rotated every repeat, so slow
drifts of a shared machine hit every config alike (as bench_train.py does). Rows report
medians over repeats; ratios are given two ways: of the medians, and the median over
repeats of the ratio within one repeat (steadier on a shared machine). A backend whose
package is not installed is skipped and recorded as skipped, so the script runs
unchanged on a machine without TensorFlow (or without JAX, or PyTorch).

Install (the package itself: ``pip install -e .``, or ``pip install --no-deps -e .`` on a
machine that must not get TensorFlow, then ``pip install keras numpy``):

- JAX: ``pip install -e .[jax]`` (CPU); on a GPU machine ``pip install -U "jax[cuda12]"``.
- PyTorch: ``pip install -r bench/requirements.txt`` (CPU build); on a GPU machine a CUDA
  build of torch (``pip install torch``). Needed by ``keras_torch_towers``,
  ``torch_plain`` and ``lrn_torch``.
- TensorFlow: optional (a dependency of ``pip install -e .``; ``tensorflow[and-cuda]``
  for a GPU). Without it ``keras_tf_towers`` is skipped and the ratios to it are empty.

On a GPU machine, run it as it is: ``python bench/bench_backends.py``. Keras puts the JAX
and PyTorch backends on the GPU by itself (each worker reports its ``device``); the
machine's GPU (``nvidia-smi``) is recorded with the results. JAX takes 75% of the GPU's
memory per process by default, which is fine here (one process at a time).

Results go to bench/results/backends.json (``--out``): per row the config, every run of
the worker, the machine, the versions and the date; medians over repeats; the ratios to
the Keras-on-TensorFlow row and to the plain-PyTorch row. `table_markdown` renders them
(tools/render_readme.py can load this file by path and call it).
"""

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # _common, also when tools/render_readme.py loads this file by path
import _common  # noqa: E402

RESULTS = os.path.join(HERE, "results")
JSON_PATH = os.path.join(RESULTS, "backends.json")
BATCH = 32
KERAS_TF = "keras_tf_towers"  # the rows the ratios are taken to
PLAIN_TORCH = "torch_plain"
VERSION_PACKAGES = ("keras", "tensorflow", "jax", "jaxlib", "torch", "numpy")


def _keras(cid, backend, label, grouping, kind="train", precision="fp32"):
    """A keras_alexnet config run by _backend_worker.py with ``KERAS_BACKEND=backend``."""
    return dict(id=cid, label=label, kind=kind, backend=backend, layout=grouping,
                script="_backend_worker.py", requires=("keras", backend),
                worker=dict(kind=kind, grouping=grouping, precision=precision))


CONFIGS = [
    _keras("keras_tf_towers", "tensorflow", "Keras on TensorFlow", "towers"),
    _keras("keras_jax_towers", "jax", "Keras on JAX", "towers"),
    _keras("keras_jax_grouped", "jax", "Keras on JAX", "grouped"),
    _keras("keras_torch_towers", "torch", "Keras on PyTorch", "towers"),
    # Mixed bfloat16 (Keras' mixed_bfloat16 policy): what `keras_alexnet.hardware.choose_precision`
    # picks per backend on a CPU with bf16 instructions rests on these rows.
    _keras("keras_tf_towers_bf16", "tensorflow", "Keras on TensorFlow", "towers", precision="bf16"),
    _keras("keras_jax_towers_bf16", "jax", "Keras on JAX", "towers", precision="bf16"),
    _keras("keras_torch_towers_bf16", "torch", "Keras on PyTorch", "towers", precision="bf16"),
    # The same network in PyTorch (groups=2 convs: the grouped layout), CPU only.
    dict(id="torch_plain", label="plain PyTorch", kind="train", backend=None, layout="grouped",
         script="_torch_worker.py", requires=("torch", "numpy"),
         worker=dict(kind="train", net="paper", precision="fp32", layout="nchw", infer_steps=0)),
    _keras("lrn_jax", "jax", "Keras on JAX", "-", kind="lrn"),
    _keras("lrn_torch", "torch", "Keras on PyTorch", "-", kind="lrn"),
]

# Per mode: the training workers' step settings (both workers take the same keys) and the
# LRN worker's. The full settings are the worker's defaults: 2 warm-up calls (tracing or
# compilation, then one more), then 3-10 timed steps over at least 20 s.
MODES = {
    "full": dict(
        repeats=2,
        train=dict(warmup=2, steps=10, min_steps=3, max_seconds=20.0),
        lrn=dict(lrn_warmup=3, lrn_number=10, lrn_repeats=7),
    ),
    "quick": dict(
        repeats=1,
        train=dict(warmup=1, steps=2, min_steps=1, max_seconds=5.0),
        lrn=dict(lrn_warmup=1, lrn_number=2, lrn_repeats=3),
    ),
}


def missing_packages(config):
    """The packages of ``config["requires"]`` that are not installed (found without
    importing them: the driver must not import TensorFlow, JAX or PyTorch)."""
    return [p for p in config["requires"] if importlib.util.find_spec(p) is None]


def worker_config(config, settings, batch):
    """The JSON config handed to the worker."""
    cfg = dict(settings[config["kind"]], batch=batch)
    cfg.update(config["worker"])
    return cfg


def gpu_description():
    """The machine's NVIDIA GPUs (``nvidia-smi``), or None; asked without importing a framework."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines or None


def run_worker(config, cfg, timeout):
    """Runs one worker process; returns its RESULT dict, or ``{"error": ...}``.

    The environment is passed through, plus ``KERAS_BACKEND`` for a Keras worker (and
    TensorFlow's log level, as bench_train.py sets it, unless already set).
    """
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if config["backend"]:
        env["KERAS_BACKEND"] = config["backend"]
    load_before = _common.load_average()
    t = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, os.path.join(HERE, config["script"]), json.dumps(cfg)],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE,
        )
    except subprocess.TimeoutExpired:
        return dict(error=f"timeout after {timeout} s", wall_s=timeout)
    wall = round(time.perf_counter() - t, 1)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result.update(wall_s=wall, load_before=round(load_before, 2),
                          load_after=round(_common.load_average(), 2))
            if config["script"] == "_torch_worker.py":
                # That worker has no device option and reports no device: it is the CPU.
                result.setdefault("device", "cpu")
                result.setdefault("train_images_per_s", result.get("train_ips"))
                result.setdefault("cpu_s_per_step", result.get("train_cpu_s_per_step"))
                result.setdefault("compile_and_first_step_s", result.get("first_call_s"))
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return dict(error=f"exit {proc.returncode}: " + " | ".join(tail), wall_s=wall)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(config, cfg, runs, machine, driver_versions):
    """One row per config: what ran, every run, medians over the runs."""
    row = {k: config[k] for k in ("id", "label", "kind", "backend", "layout", "script")}
    row["config"] = cfg
    ok = [r for r in runs if "error" not in r and "skipped" not in r]
    row["runs"] = len(ok)
    row["errors"] = [r["error"] for r in runs if "error" in r]
    skipped = [r["skipped"] for r in runs if "skipped" in r]
    if skipped:
        row["skipped"] = skipped[0]
    row["machine"] = machine
    # A worker's own versions (_backend_worker reports them); else the driver's view.
    row["versions"] = next((r["versions"] for r in ok if r.get("versions")), driver_versions)
    row["date"] = max((r["date_utc"] for r in runs if "date_utc" in r), default=_common.now_utc())
    row["worker_results"] = runs
    if not ok:
        return row
    first = ok[0]
    row["device"] = first.get("device")
    if "tensorflow_imported" in first:
        row["tensorflow_imported"] = any(r.get("tensorflow_imported") for r in ok)
    if config["kind"] == "train":
        if "jit_compile" in first:
            row["jit_compile"] = first["jit_compile"]
        row["params"] = first.get("params")
        for key in ("train_images_per_s", "cpu_s_per_step", "compile_and_first_step_s",
                    "peak_rss_mib"):
            vals = [r.get(key) for r in ok if r.get(key) is not None]
            if vals:
                row[key] = round(_median(vals), 3)
                row[key + "_runs"] = [round(v, 3) for v in vals]
    else:
        shapes = []
        for i, s in enumerate(first["lrn"]):
            per = [r["lrn"][i] for r in ok]
            auto = _median([p["autodiff_ms"] for p in per])
            custom = _median([p["custom_ms"] for p in per])
            shapes.append(dict(
                name=s["name"], shape=s["shape"], groups=s["groups"],
                autodiff_ms=round(auto, 4), custom_ms=round(custom, 4),
                custom_over_autodiff=round(custom / auto, 3),
                custom_over_autodiff_per_repeat=round(
                    _median([p["custom_over_autodiff"] for p in per]), 3),
                max_relative_difference=max(
                    max(p["max_relative_difference"].values()) for p in per),
            ))
        row["lrn"] = shapes
    return row


def _per_repeat(runs, key="train_images_per_s"):
    return {r["repeat"]: r[key] for r in runs if r.get(key) is not None}


def add_ratios(rows):
    """Each training row's images/s over the Keras-on-TensorFlow row's and over the
    plain-PyTorch row's: ratio of the medians, and median over repeats of the ratio
    within a repeat. A ratio across devices (a GPU row over the CPU-only plain-PyTorch
    row, say) is kept but flagged in ``ratio_devices_differ``."""
    by = {r["id"]: r for r in rows}
    for row in rows:
        if row["kind"] != "train" or not row.get("train_images_per_s"):
            continue
        for base_id, name in ((KERAS_TF, "keras_tensorflow"), (PLAIN_TORCH, "plain_pytorch")):
            base = by.get(base_id, {})
            if not base.get("train_images_per_s"):
                row[f"ratio_to_{name}"] = None
                continue
            row[f"ratio_to_{name}"] = round(row["train_images_per_s"] / base["train_images_per_s"], 3)
            num = _per_repeat(row["worker_results"])
            den = _per_repeat(base["worker_results"])
            ratios = [num[k] / den[k] for k in num if k in den and den[k]]
            row[f"ratio_to_{name}_per_repeat"] = round(_median(ratios), 3) if ratios else None
            if row.get("device") != base.get("device"):
                row.setdefault("ratio_devices_differ", {})[name] = f"{row.get('device')} vs {base.get('device')}"
    return rows


# ---------------------------------------------------------------------------- tables


def _fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def _ratio(row, name):
    v = row.get(f"ratio_to_{name}")
    if v is None:
        return "-"
    text = f"{v:.2f}x"
    per_rep = row.get(f"ratio_to_{name}_per_repeat")
    if per_rep is not None and row.get("runs", 0) > 1:
        text += f" ({per_rep:.2f}x per repeat)"
    if name in row.get("ratio_devices_differ", {}):
        text += " †"
    return text


def _measured(row):
    """The "what is measured" cell: the step, its settings and the device."""
    cfg = row["config"]
    if row["script"] == "_torch_worker.py":
        what = "eager training step, NCHW"
    else:
        modes = {"tensorflow": ("XLA", "tf.function, no XLA"), "jax": ("XLA", "eager"),
                 "torch": ("torch.compile", "eager")}  # jit_compile True / False
        jit = row.get("jit_compile")
        jit = "" if jit is None else ", " + modes.get(row["backend"], ("jit", "no jit"))[0 if jit else 1]
        what = f"`train_on_batch`{jit}"
    return f"{what}, {cfg.get('precision', 'fp32')}, batch {cfg['batch']}, {row.get('device') or '?'}"


def _machine_line(results):
    m, v = results["machine"], results["versions"]
    parts = [f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores"
             + (", AVX-512" if m.get("avx512") else "") + f", bf16 instructions: {m.get('bf16_hardware', '?')}"]
    if results.get("gpu"):
        parts.append("GPU " + "; ".join(results["gpu"]))
    parts.append(", ".join(f"{name} {v[key]}" for name, key in (
        ("Keras", "keras"), ("TensorFlow", "tensorflow"), ("JAX", "jax"), ("PyTorch", "torch"))
        if v.get(key)))
    parts.append(str(results.get("date", "?"))[:10])
    load = m.get("load_average_at_start")
    if load:
        parts.append(f"load average {load[0]:.1f} at start")
    return "; ".join(parts)


def table_markdown(results):
    """The README tables (markdown) of a saved run: training images/s per backend with
    the ratios, then the LRN gradient. For tools/render_readme.py, which loads this file
    by path (bench/ is not a package) and calls it on bench/results/backends.json."""
    lines = [
        "| backend | layout | what is measured | training images/s | ratio to Keras on TensorFlow | ratio to plain PyTorch |",
        "|---|---|---|---:|---:|---:|",
    ]
    crossed = False
    for r in results["rows"]:
        if r["kind"] != "train":
            continue
        if r.get("skipped"):
            lines.append(f"| {r['label']} | {r['layout']} | - | skipped: {r['skipped']} | - | - |")
            continue
        if not r.get("train_images_per_s"):
            lines.append(f"| {r['label']} | {r['layout']} | - | failed: see its errors in the JSON | - | - |")
            continue
        crossed = crossed or bool(r.get("ratio_devices_differ"))
        lines.append(f"| {r['label']} | {r['layout']} | {_measured(r)} | {_fmt(r['train_images_per_s'])} | "
                     f"{_ratio(r, 'keras_tensorflow')} | {_ratio(r, 'plain_pytorch')} |")
    notes = [f"Medians of {results['repeats']} interleaved repeat(s) (`{results['mode']}` run), one "
             "process per measurement, the paper network (60,965,224 parameters), SGD with momentum, "
             "one synthetic in-memory batch."]
    if crossed:
        notes.append("† the two rows ran on different devices (bench/_torch_worker.py trains on the CPU "
                     "only).")
    lrn_rows = [r for r in results["rows"] if r["kind"] == "lrn"]
    lrn_lines = []
    for r in lrn_rows:
        if r.get("skipped") or not r.get("lrn"):
            why = r.get("skipped") and f"skipped: {r['skipped']}" or "failed: see its errors in the JSON"
            lrn_lines.append(f"| {r['label']} | - | {why} | - | - |")
            continue
        for s in r["lrn"]:
            shape = "x".join(map(str, s["shape"]))
            lrn_lines.append(f"| {r['label']}, {r.get('device') or '?'} | {s['name']} {shape}, groups {s['groups']} | "
                             f"{s['autodiff_ms']:.3f} | {s['custom_ms']:.3f} | {s['custom_over_autodiff']:.2f} |")
    if lrn_lines:
        lines += ["", "| LRN forward + backward | shape | autodiff ms | custom gradient ms | custom / autodiff |",
                  "|---|---|---:|---:|---:|"] + lrn_lines
        notes.append("LRN: the library's `keras.ops` LRN (the hand-written gradient of its TensorFlow "
                     "path, through `keras.ops.custom_gradient`: what the layer uses off TensorFlow) "
                     "against the same forward differentiated by autodiff, equal to 1e-5 (asserted); ms per call of the gradient "
                     "of `sum(lrn(x) * w)`: `jax.jit(jax.grad(...))` on JAX, eager `.backward()` on PyTorch.")
    notes.append(f"{_machine_line(results)}. `bench/results/backends.json`, from `python bench/bench_backends.py`.")
    return "\n".join(lines + [""] + [" ".join(notes)])


# ------------------------------------------------------------------------------ main


def _describe(r):
    if "error" in r:
        return "ERROR " + r["error"][:300]
    if "skipped" in r:
        return "skipped: " + r["skipped"]
    if r.get("kind") == "lrn":
        return "  ".join(f"{s['name']} autodiff {s['autodiff_ms']:.2f} ms custom {s['custom_ms']:.2f} ms"
                         for s in r["lrn"]) + f"  [{r.get('device')}]"
    tf = "" if r.get("tensorflow_imported") is None else f"  tf imported: {r['tensorflow_imported']}"
    return (f"train {r['train_images_per_s']:8.2f} img/s  first step "
            f"{r.get('compile_and_first_step_s') or 0:.1f}s  [{r.get('device')}]{tf}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 2; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 repeat, few steps")
    p.add_argument("--batch", type=int, default=BATCH, help=f"batch size (default {BATCH})")
    p.add_argument("--only", default="", help="comma-separated config ids")
    p.add_argument("--table", action="store_true", help="print the README tables of the saved run and exit")
    p.add_argument("--list", action="store_true", help="list the config ids and exit")
    p.add_argument("--out", default=JSON_PATH, help="results file (default bench/results/backends.json)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per worker process")
    args = p.parse_args()

    if args.list:
        for c in CONFIGS:
            print(f"{c['id']:<20} {c['kind']:<6} {c['label']}, {c['layout']} (needs {', '.join(c['requires'])})")
        return
    if args.table:
        with open(args.out) as f:
            print(table_markdown(json.load(f)))
        return

    mode = "quick" if args.quick else "full"
    settings = MODES[mode]
    repeats = args.repeats or settings["repeats"]
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - {c["id"] for c in CONFIGS})
    if unknown:
        p.error(f"unknown config ids {unknown} (ids: {', '.join(c['id'] for c in CONFIGS)})")
    configs = [c for c in CONFIGS if not only or c["id"] in only]
    cfgs = {c["id"]: worker_config(c, settings, args.batch) for c in configs}
    runs = {c["id"]: [] for c in configs}
    for c in configs:  # recorded once, never run
        missing = missing_packages(c)
        if missing:
            runs[c["id"]].append(dict(skipped=f"{', '.join(missing)} not installed", date_utc=_common.now_utc()))
    todo = [c for c in configs if not runs[c["id"]]]

    machine = _common.machine(*VERSION_PACKAGES)
    versions = _common.versions(*VERSION_PACKAGES)
    gpu = gpu_description()
    print(f"{machine['cpu_model']}, {machine['cores']} cores, GPU: {gpu or 'none'}; "
          + ", ".join(f"{k} {versions[k]}" for k in VERSION_PACKAGES if versions.get(k))
          + f"; {mode}, {repeats} repeat(s), batch {args.batch}, {len(todo)} of {len(configs)} configs to run",
          flush=True)
    for c in configs:
        if runs[c["id"]]:
            print(f"  {c['id']:<20} {runs[c['id']][0]['skipped']}", flush=True)

    t_start = time.perf_counter()
    for rep in range(repeats):
        shift = rep % len(todo) if todo else 0
        for c in todo[shift:] + todo[:shift]:  # rotate the order every repeat
            r = run_worker(c, cfgs[c["id"]], args.timeout)
            r.update(repeat=rep, date_utc=_common.now_utc())
            runs[c["id"]].append(r)
            print(f"[{time.perf_counter() - t_start:6.0f}s] rep {rep + 1}/{repeats} {c['id']:<20} "
                  f"{_describe(r)}  ({r.get('wall_s', 0):.0f}s)", flush=True)

    rows = add_ratios([aggregate(c, cfgs[c["id"]], runs[c["id"]], machine, versions) for c in configs])
    results = dict(
        machine=machine,
        gpu=gpu,
        versions=versions,
        date=_common.now_utc(),
        mode=mode,
        repeats=repeats,
        batch=args.batch,
        only=only or None,
        settings=settings,
        elapsed_s=round(time.perf_counter() - t_start, 1),
        rows=rows,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print()
    print(table_markdown(results))
    print(f"\nwrote {args.out}; {results['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
