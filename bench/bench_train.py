"""Training and inference speed of keras_alexnet against PyTorch, on one CPU machine.

    python bench/bench_train.py              # full run (~15 min on 2 idle cores)
    python bench/bench_train.py --quick      # fewer configs, steps and repeats (~3 min)
    python bench/bench_train.py --candidates # + the candidate speed-ups of bench/NOTES.md
    python bench/bench_train.py --e2e        # + training fed by keras_alexnet.data
    python bench/bench_train.py --table      # print the README table from the saved run
    python bench/bench_train.py --only k_towers_fp32,t_paper_fp32_nchw  # a subset

Every measurement runs in its own process (bench/_keras_worker.py or
bench/_torch_worker.py: one framework per process; TensorFlow and PyTorch in one process
slow each other down), on the same synthetic batch of 128 images (NumPy seed 0). The
processes alternate: ``for repeat: for config: run one worker``, the order rotated every
repeat, so slow drifts of a shared machine hit every config alike; the tables report
medians over the repeats. Each worker warms up, then times training steps (SGD with
momentum, softmax cross-entropy, batch 128), then inference on the same model.

Also measured: the GFLOP/s of a square matmul (fp32 4096, bf16 2048) in TensorFlow and
PyTorch. The fp32 ceiling for AlexNet training is (fp32 matmul GFLOP/s) / 4.35 GFLOP per
training image (724 M multiply-adds, 1.45 GFLOP, forward; about 3x for a training step), with
the best probe of the run as the rate (background load can only lower a probe).

Results go to bench/results/train_speed.json and .csv. Runs with --only or --candidates
are experiments: they are appended to bench/results/train_speed_candidates.json instead,
so a benchmark run never mixes with an experiment. Every row names the machine, the
versions and the date.
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # _common, also when tools/render_readme.py loads this file by path
import _common  # noqa: E402

RESULTS = os.path.join(HERE, "results")
JSON_PATH = os.path.join(RESULTS, "train_speed.json")
CSV_PATH = os.path.join(RESULTS, "train_speed.csv")
CANDIDATES_PATH = os.path.join(RESULTS, "train_speed_candidates.json")
README_PATH = os.path.join(HERE, "README.md")

# conv1-5 (grouped conv2/4/5) and fc6-8: 724 M multiply-adds forward, x3 for training.
GFLOP_PER_TRAIN_IMAGE = 4.35
BATCH = 128

# Targets of issue 7.
TARGET_FP32_VS_TORCH = 2.5  # keras fp32 / PyTorch fp32, same (paper) network
TARGET_BF16_VS_TORCH = 3.0  # keras bf16 / PyTorch bf16, same network
TARGET_BF16_VS_TORCHVISION = 1.0  # keras bf16 / PyTorch torchvision-style AlexNet bf16
TARGET_FP32_CEILING = 0.75  # keras fp32 / fp32 ceiling


def _keras(cid, label, tier, precision, grouping="towers", xla=False, lrn="default", **extra):
    """A keras_alexnet config; ``extra`` goes to the worker (and overrides the mode's
    step settings, e.g. ``warmup=1``)."""
    return dict(
        id=cid,
        label=label,
        tier=tier,
        framework="keras",
        network="paper",
        precision=precision,
        layout="nhwc",
        worker=dict(precision=precision, grouping=grouping, xla=xla, lrn=lrn, **extra),
    )


def _torch(cid, label, tier, net, precision, layout, **extra):
    return dict(
        id=cid,
        label=label,
        tier=tier,
        framework="torch",
        network=net,
        precision=precision,
        layout=layout,
        worker=dict(net=net, precision=precision, layout=layout, **extra),
    )


# Tiers: "core" runs in every repeat, also with --quick; "full" in every repeat of a full
# run; "once" in the first repeat of a full run only (paths that lose, measured once to
# show it); "candidate" only with --candidates; "e2e" only with --e2e. The time budget
# decides what gets repeats: on a CPU without bf16 instructions one emulated-bf16 step
# takes 10-20 s, which is what makes a full run take ~20 min there.
CONFIGS = [
    # keras_alexnet as shipped: two towers of plain Conv2D, the banded-matmul LRN, and XLA
    # where the library turns it on by itself (`hardware.choose_xla`: bf16 on a CPU
    # without bf16 instructions).
    _keras("k_towers_fp32", "keras_alexnet (default)", "core", "fp32", xla="auto"),
    _keras("k_towers_bf16", "keras_alexnet (default)", "core", "bf16", xla="auto"),
    # What the defaults replaced: tf.nn LRN (the reference path), and bf16 without XLA.
    _keras("k_towers_fp32_tfnn", "keras_alexnet towers, tf.nn LRN (before)", "full", "fp32",
           lrn="tf_nn"),
    # (bf16 without XLA: one warm-up call; a step takes ~20 s where bf16 is emulated.)
    _keras("k_towers_bf16_noxla", "keras_alexnet towers, no XLA", "full", "bf16", warmup=1),
    _keras("k_towers_bf16_tfnn", "keras_alexnet towers, tf.nn LRN, no XLA (before)", "once",
           "bf16", lrn="tf_nn", warmup=1, min_steps=1),
    # XLA and the grouped layout.
    _keras("k_towers_fp32_xla", "keras_alexnet towers, XLA", "once", "fp32", xla=True,
           min_steps=1),
    _keras("k_grouped_fp32", "keras_alexnet grouped", "once", "fp32", grouping="grouped"),
    _keras("k_grouped_bf16", "keras_alexnet grouped", "once", "bf16", grouping="grouped", warmup=1,
           min_steps=1),
    # XLA's grouped-conv filter gradient is slow (grouped fp32 trains at 8 img/s with XLA,
    # 38 without): one warm-up call and as little as one timed step keep these two from
    # eating the time budget.
    _keras("k_grouped_fp32_xla", "keras_alexnet grouped, XLA", "once", "fp32", grouping="grouped",
           xla=True, warmup=1, min_steps=1),
    _keras("k_grouped_bf16_xla", "keras_alexnet grouped, XLA", "once", "bf16", grouping="grouped",
           xla=True, warmup=1, min_steps=1),
    # PyTorch, the same paper network (groups=2, LRN).
    _torch("t_paper_fp32_nchw", "PyTorch paper AlexNet", "core", "paper", "fp32", "nchw"),
    _torch("t_paper_bf16_nchw", "PyTorch paper AlexNet", "core", "paper", "bf16", "nchw"),
    _torch("t_paper_fp32_cl", "PyTorch paper AlexNet", "full", "paper", "fp32", "cl"),
    _torch("t_paper_bf16_cl", "PyTorch paper AlexNet", "once", "paper", "bf16", "cl", min_steps=1),
    # PyTorch's fastest AlexNet: torchvision's "one weird trick" variant.
    _torch("t_tv_fp32_cl", "PyTorch torchvision-style AlexNet", "full", "torchvision", "fp32", "cl"),
    _torch("t_tv_bf16_cl", "PyTorch torchvision-style AlexNet", "core", "torchvision", "bf16", "cl"),
    # Matmul probes: the ceiling.
    dict(id="matmul_tf", label="matmul, TensorFlow", tier="core", framework="keras",
         network="-", precision="fp32+bf16", layout="-", worker=dict(kind="matmul")),
    dict(id="matmul_torch", label="matmul, PyTorch", tier="core", framework="torch",
         network="-", precision="fp32+bf16", layout="-", worker=dict(kind="matmul")),
    # Candidate changes to keras_alexnet's default path (bench/NOTES.md).
    _keras("c_towers_fp32_nolrn", "towers, no LRN (cost of LRN)", "candidate", "fp32", lrn="off"),
    _keras("c_towers_bf16_nolrn", "towers, no LRN (cost of LRN)", "candidate", "bf16", lrn="off"),
    _keras("c_grouped_fp32_tfnn", "grouped + tf.nn LRN", "candidate", "fp32", grouping="grouped", lrn="tf_nn"),
    _keras("c_grouped_bf16_tfnn", "grouped + tf.nn LRN", "candidate", "bf16", grouping="grouped", lrn="tf_nn"),
    _keras("c_towers_fp32_spe4", "towers, steps_per_execution=4", "candidate", "fp32", steps_per_execution=4),
    _keras("c_towers_fp32_intra2_inter1", "towers, intra=2 inter=1", "candidate", "fp32", intra=2, inter=1),
    _keras("c_towers_fp32_intra1_inter2", "towers, intra=1 inter=2", "candidate", "fp32", intra=1, inter=2),
    _keras("c_towers_fp32_xla_onednn", "towers, XLA with --xla_cpu_use_onednn", "candidate",
           "fp32", xla=True, xla_flags="--xla_cpu_use_onednn=true"),
    _keras("c_towers_bf16_xla_onednn", "towers, XLA with --xla_cpu_use_onednn", "candidate",
           "bf16", xla=True, xla_flags="--xla_cpu_use_onednn=true"),
    _keras("c_towers_bf16_xla_tfnn", "towers, XLA + tf.nn LRN", "candidate", "bf16",
           xla=True, lrn="tf_nn"),
    # --e2e: the same model fed by keras_alexnet.data from JPEGs (Imagenette) instead of
    # one in-memory batch; compare with k_towers_fp32 / k_towers_bf16 of the same run.
    dict(id="e2e_towers_fp32", label="keras_alexnet towers, JPEG input (keras_alexnet.data)",
         tier="e2e", framework="keras", network="paper", precision="fp32", layout="nhwc",
         worker=dict(kind="e2e", precision="fp32")),
    dict(id="e2e_towers_bf16", label="keras_alexnet towers, JPEG input (keras_alexnet.data)",
         tier="e2e", framework="keras", network="paper", precision="bf16", layout="nhwc",
         worker=dict(kind="e2e", precision="bf16")),
]

# Steps and time caps per mode: each worker warms up, then times at most `steps` steps,
# stopping once `min_steps` are done and `max_seconds` have passed (emulated bf16, on CPUs
# without AVX512_BF16 / AMX, takes 5-10x longer per step than fp32). Keras warms up two
# calls (trace + one more); PyTorch one (no tracing).
MODES = {
    "full": dict(
        repeats=2,
        keras=dict(warmup=2, steps=6, min_steps=2, max_seconds=8.0, infer_steps=4,
                   infer_min_steps=1, infer_max_seconds=3.0),
        torch=dict(warmup=1, steps=6, min_steps=2, max_seconds=8.0, infer_steps=4,
                   infer_min_steps=1, infer_max_seconds=3.0),
        matmul=dict(matmul_seconds=2.0),
    ),
    "quick": dict(
        repeats=1,
        keras=dict(warmup=1, steps=2, min_steps=1, max_seconds=4.0, infer_steps=2,
                   infer_min_steps=1, infer_max_seconds=2.0),
        torch=dict(warmup=1, steps=2, min_steps=1, max_seconds=4.0, infer_steps=2,
                   infer_min_steps=1, infer_max_seconds=2.0),
        matmul=dict(matmul_seconds=1.0),
    ),
}


def machine_info():
    """The run's machine (the keys train_speed.json has always had: --add-repeats
    compares them with the saved run's)."""
    c = _common.cpu()
    return dict(cpu=c["cpu_model"], cores=c["cores"], avx512=c["avx512"],
                bf16_hardware=c["bf16_hardware"])


def versions():
    v = _common.versions("tensorflow", "keras", "torch")
    return dict(python=v["python"], tf=v["tensorflow"], keras=v["keras"], torch=v["torch"])


def run_worker(config, settings, timeout=1200):
    """Runs one worker process; returns its RESULT dict (or an ``error``)."""
    script = "_keras_worker.py" if config["framework"] == "keras" else "_torch_worker.py"
    kind = config["worker"].get("kind", "train")
    cfg = dict(settings["matmul"] if kind == "matmul" else settings[config["framework"]])
    cfg.update(config["worker"])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    load_before = _common.load_average()  # background load: this benchmark alone adds ~cores
    t = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, os.path.join(HERE, script), json.dumps(cfg)],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE,
        )
    except subprocess.TimeoutExpired:
        return dict(error=f"timeout after {timeout} s", wall_s=timeout)
    wall = time.perf_counter() - t
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["wall_s"] = round(wall, 1)
            result["load_before"] = round(load_before, 2)
            result["load_after"] = round(_common.load_average(), 2)
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return dict(error=f"exit {proc.returncode}: " + " | ".join(tail), wall_s=round(wall, 1))


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(config, runs):
    """One row per config: medians over its runs, plus every run's value."""
    row = {k: config[k] for k in ("id", "label", "framework", "network", "precision", "layout")}
    w = config["worker"]
    row.update(
        grouping=w.get("grouping", "-") if config["framework"] == "keras" else (
            "groups=2" if config["network"] == "paper" else "none"),
        xla=w.get("xla", False),
        lrn=w.get("lrn", "default") if config["framework"] == "keras" else (
            "nn.LocalResponseNorm" if config["network"] == "paper" else "none"),
        tier=config["tier"],
    )
    ok = [r for r in runs if "error" not in r]
    resolved = [r["config"]["xla_resolved"] for r in ok if "xla_resolved" in r.get("config", {})]
    if resolved:  # xla="auto": what the library chose on this machine
        row["xla"] = resolved[0]
    row["runs"] = len(ok)
    row["errors"] = [r["error"] for r in runs if "error" in r]
    if ok and "skipped" in ok[0]:
        row["skipped"] = ok[0]["skipped"]
    for key in ("train_ips", "infer_ips", "train_cpu_s_per_step", "infer_cpu_s_per_step",
                "peak_rss_mib", "peak_rss_mib_train", "load_after",
                "matmul_gflops_fp32", "matmul_gflops_bf16"):
        vals = [r.get(key) for r in ok if r.get(key) is not None]
        if vals:
            row[key] = round(_median(vals), 2)
            row[key + "_runs"] = [round(v, 2) for v in vals]
    if ok and "params" in ok[0]:
        row["params"] = ok[0]["params"]
    return row


def _per_repeat(raw, cid, key):
    """{repeat: value} of one config's runs (a run's position is its repeat when older
    files lack the ``repeat`` field: configs run once run in the first repeat)."""
    out = {}
    for i, r in enumerate(raw.get(cid, [])):
        if r.get(key) is not None:
            out[r.get("repeat", i)] = r[key]
    return out


def summarize(rows, raw=None):
    """Ceilings and the issue's targets, from the rows (and raw runs) of one run.

    Each target is reported two ways: the ratio of the two rows' medians, and the median
    over repeats of the ratio within one repeat (both processes ran minutes apart, under
    about the same background load). The second is the steadier one on a shared machine.
    """
    raw = raw or {}
    by = {r["id"]: r for r in rows}

    def ips(cid):
        return by.get(cid, {}).get("train_ips")

    def best(ids):
        vals = [(ips(i), i) for i in ids if ips(i)]
        return max(vals) if vals else (None, None)

    # The ceiling is a property of the hardware, which background load can only hide: it
    # is the best rate any probe reached (both frameworks, every repeat). That makes the
    # ceiling target stricter, not easier.
    def probe_max(key):
        vals = [v for i in ("matmul_tf", "matmul_torch")
                for v in by.get(i, {}).get(key + "_runs", [])]
        return max(vals) if vals else None

    mm32 = {i: 1 for i in ("matmul_tf", "matmul_torch") if "matmul_gflops_fp32" in by.get(i, {})}
    s = dict(
        gflop_per_train_image=GFLOP_PER_TRAIN_IMAGE,
        matmul_gflops_fp32=probe_max("matmul_gflops_fp32"),
        matmul_gflops_bf16=probe_max("matmul_gflops_bf16"),
    )
    s["ceiling_fp32_ips"] = (s["matmul_gflops_fp32"] / GFLOP_PER_TRAIN_IMAGE
                             if s["matmul_gflops_fp32"] else None)
    s["ceiling_bf16_ips"] = (s["matmul_gflops_bf16"] / GFLOP_PER_TRAIN_IMAGE
                             if s["matmul_gflops_bf16"] else None)
    # Per repeat, the ceiling stays the hardware's (the best probe of the run).
    ceiling_rep = {rep: s["ceiling_fp32_ips"] for rep in range(64)} if mm32 else {}
    torch32, torch32_id = best(["t_paper_fp32_nchw", "t_paper_fp32_cl"])
    torch16, torch16_id = best(["t_paper_bf16_nchw", "t_paper_bf16_cl"])
    tv16 = ips("t_tv_bf16_cl")
    # Candidates for "best keras path": the paper network (LRN on), in-memory input.
    keras_rows = [r for r in rows if r["framework"] == "keras" and r["network"] == "paper"
                  and r.get("train_ips") and r["lrn"] != "off" and not r["id"].startswith("e2e")]

    def best_keras(precision):
        cands = [r for r in keras_rows if r["precision"] == precision]
        return max(cands, key=lambda r: r["train_ips"])["id"] if cands else None

    def repeat_ratio(num_id, den):
        """Median over repeats of num/den within a repeat; den: a config id or a dict."""
        num = _per_repeat(raw, num_id, "train_ips")
        den = den if isinstance(den, dict) else _per_repeat(raw, den, "train_ips")
        ratios = [num[r] / den[r] for r in num if r in den and den[r]]
        return (round(statistics.median(ratios), 3), len(ratios)) if ratios else (None, 0)

    targets = []
    for variant, k32_id, k16_id in (
        ("as shipped (defaults for this machine)", "k_towers_fp32", "k_towers_bf16"),
        ("best keras path measured", best_keras("fp32"), best_keras("bf16")),
    ):
        k32, k16 = ips(k32_id), ips(k16_id)
        for name, num_id, num, den_id, den, goal in (
            ("fp32: keras / PyTorch, same network", k32_id, k32, torch32_id, torch32,
             TARGET_FP32_VS_TORCH),
            ("bf16: keras / PyTorch, same network", k16_id, k16, torch16_id, torch16,
             TARGET_BF16_VS_TORCH),
            ("bf16: keras / PyTorch torchvision-style", k16_id, k16, "t_tv_bf16_cl", tv16,
             TARGET_BF16_VS_TORCHVISION),
            ("fp32: keras / fp32 ceiling", k32_id, k32, "ceiling", s["ceiling_fp32_ips"],
             TARGET_FP32_CEILING),
        ):
            value = num / den if num and den else None
            per_rep, n_rep = repeat_ratio(num_id, ceiling_rep if den_id == "ceiling" else den_id)
            # The same comparison in process CPU-seconds per step (work, not waiting):
            # background load stretches wall time far more than it changes CPU time.
            cpu_num = by.get(num_id, {}).get("train_cpu_s_per_step")
            cpu_den = by.get(den_id, {}).get("train_cpu_s_per_step")
            cpu_ratio = round(cpu_den / cpu_num, 3) if cpu_num and cpu_den else None
            targets.append(dict(
                variant=variant, target=name, goal=goal,
                detail=f"{num_id} vs {den_id}" + (
                    f" (best fp32 matmul / {GFLOP_PER_TRAIN_IMAGE})" if den_id == "ceiling" else ""),
                value=None if value is None else round(value, 3),
                met=None if value is None else bool(value >= goal),
                per_repeat_value=per_rep, repeats_compared=n_rep,
                met_per_repeat=None if per_rep is None else bool(per_rep >= goal),
                cpu_time_ratio=cpu_ratio,
            ))
    s["targets"] = targets
    # End to end: the same model fed by keras_alexnet.data from JPEGs vs one in-memory batch.
    s["e2e"] = []
    for precision in ("fp32", "bf16"):
        e_id, k_id = f"e2e_towers_{precision}", f"k_towers_{precision}"
        e, k = ips(e_id), ips(k_id)
        if e and k:
            per_rep, n_rep = repeat_ratio(e_id, k_id)
            s["e2e"].append(dict(precision=precision, jpeg_ips=e, synthetic_ips=k,
                                 ratio=round(e / k, 3), per_repeat_ratio=per_rep,
                                 repeats_compared=n_rep))
    k = by.get("k_towers_fp32", {})
    s["keras_train_peak_rss_mib"] = k.get("peak_rss_mib_train")
    return s


def _fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def render_table(results):
    """The README speed table (markdown) of a saved run."""
    m, v = results["machine"], results["versions"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, bf16 instructions: {m['bf16_hardware']}. "
        f"TensorFlow {v['tf']}, Keras {v['keras']}, PyTorch {v['torch']}. "
        f"{results['date']}, `{results['mode']}` run, medians of up to {results['repeats']} "
        f"interleaved repeats, batch {BATCH}, synthetic inputs (one in-memory batch) except "
        f"the JPEG-input rows.",
        "",
        "| network | implementation | precision | layout | XLA | train img/s | inference img/s | train CPU-s/step | peak RSS MiB | runs |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        if r["id"].startswith("matmul") or r.get("skipped"):
            continue
        net = {"paper": "paper (60,965,224)", "torchvision": "torchvision-style (61,100,840)"}[
            r["network"]]
        layout = {"nhwc": "NHWC", "nchw": "NCHW", "cl": "channels-last"}[r["layout"]]
        if r["errors"] and not r["runs"]:
            lines.append(f"| {net} | {r['label']} | {r['precision']} | {layout} | "
                         f"{'on' if r['xla'] else 'off'} | failed | | | | 0 |")
            continue
        lines.append(
            f"| {net} | {r['label']} | {r['precision']} | {layout} | "
            f"{'on' if r['xla'] else 'off'} | {_fmt(r.get('train_ips'))} | "
            f"{_fmt(r.get('infer_ips'))} | {_fmt(r.get('train_cpu_s_per_step'), 2)} | "
            f"{_fmt(r.get('peak_rss_mib_train'), 0)} | {r['runs']} |"
        )
    s = results["summary"]
    lines += [
        "",
        "| square matmul (fp32 4096, bf16 2048) | fp32 GFLOP/s | bf16 GFLOP/s |",
        "|---|---:|---:|",
    ]
    for r in results["rows"]:
        if r["id"].startswith("matmul"):
            lines.append(f"| {r['label']} | {_fmt(r.get('matmul_gflops_fp32'))} | "
                         f"{_fmt(r.get('matmul_gflops_bf16'))} |")
    lines += [
        "",
        f"Ceiling (best matmul GFLOP/s / {s['gflop_per_train_image']} GFLOP per training "
        f"image): fp32 {_fmt(s['ceiling_fp32_ips'])} img/s, bf16 "
        f"{_fmt(s['ceiling_bf16_ips'])} img/s.",
        "",
        "Targets: the ratio of the two rows' median img/s; the median over repeats of the "
        "ratio within one repeat (steadier when the machine is shared); and the inverse "
        "ratio of their CPU-seconds per training step (work done, hardly touched by "
        "background load). \"met\" uses the first two.",
        "",
        "| keras_alexnet | target | goal | ratio of medians | per-repeat median | CPU-time ratio | met | rows compared |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for t in s["targets"]:
        flags = {t["met"], t.get("met_per_repeat", t["met"])} - {None}
        met = "-" if not flags else ("yes" if flags == {True} else
                                     "**no**" if flags == {False} else "borderline")
        per_rep = t.get("per_repeat_value")
        per_rep = "-" if per_rep is None else f"{per_rep:.3f}x ({t['repeats_compared']})"
        cpu = t.get("cpu_time_ratio")
        cpu = "-" if cpu is None else f"{cpu:.2f}x"
        lines.append(f"| {t['variant']} | {t['target']} | {t['goal']:g}x | "
                     f"{_fmt(t['value'], 3)}x | {per_rep} | {cpu} | {met} | {t['detail']} |")
    if s.get("e2e"):
        lines += [
            "",
            "End to end (does the input pipeline starve training?): the default model fed by "
            "`keras_alexnet.data` from Imagenette JPEGs (decode, resize, random crop, flip, "
            "mean image, PCA noise) against the same model on one in-memory batch.",
            "",
            "| precision | JPEG input img/s | synthetic img/s | ratio of medians | per-repeat median |",
            "|---|---:|---:|---:|---:|",
        ]
        for e in s["e2e"]:
            per_rep = e.get("per_repeat_ratio")
            per_rep = "-" if per_rep is None else f"{per_rep:.3f} ({e['repeats_compared']})"
            lines.append(f"| {e['precision']} | {_fmt(e['jpeg_ips'])} | {_fmt(e['synthetic_ips'])} | "
                         f"{e['ratio']:.3f} | {per_rep} |")
    return "\n".join(lines)


def write_results(results, path_json, path_csv=None):
    os.makedirs(os.path.dirname(path_json), exist_ok=True)
    with open(path_json, "w") as f:
        json.dump(results, f, indent=1)
    if path_csv is None:
        return
    common = dict(cpu=results["machine"]["cpu"], cores=results["machine"]["cores"],
                  bf16_hardware=results["machine"]["bf16_hardware"], **results["versions"],
                  date=results["date"], mode=results["mode"])
    rows = [dict(r, **common) for r in results["rows"]]
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ";".join(map(str, v)) if isinstance(v, list) else v
                        for k, v in r.items()})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="core configs, 1 repeat, few steps")
    p.add_argument("--candidates", action="store_true",
                   help="also run the candidate speed-ups (results to train_speed_candidates.json)")
    p.add_argument("--e2e", action="store_true",
                   help="also time training fed by keras_alexnet.data (when it exists)")
    p.add_argument("--only", default="", help="comma-separated config ids")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--table", action="store_true", help="print the README table and exit")
    p.add_argument("--update-readme", action="store_true",
                   help="with --table: also write it into bench/README.md between markers")
    p.add_argument("--list", action="store_true", help="list the config ids and exit")
    p.add_argument("--add-repeats", type=int, default=0, metavar="N",
                   help="run N more repeats of the saved run (same configs and settings; "
                        "for a shared machine) and rewrite its results")
    args = p.parse_args()

    if args.list:
        for c in CONFIGS:
            print(f"{c['id']:<30} {c['tier']:<10} {c['label']} {c['precision']} {c['layout']}")
        return
    if args.table:
        with open(JSON_PATH) as f:
            saved = json.load(f)
        saved["summary"] = summarize(saved["rows"], saved.get("raw_runs"))  # current rules
        table = render_table(saved)
        print(table)
        if args.update_readme:
            update_readme(table)
        return

    saved = None
    if args.add_repeats:
        with open(JSON_PATH) as f:
            saved = json.load(f)
        mode, settings = saved["mode"], saved["settings"]
        ids = [r["id"] for r in saved["rows"]]
        configs = [c for c in CONFIGS if c["id"] in ids]
        first_rep = saved["repeats"]
        repeats = first_rep + args.add_repeats
        runs = {c["id"]: list(saved["raw_runs"].get(c["id"], [])) for c in configs}
        elapsed_before = saved.get("elapsed_s", 0.0)
    else:
        mode = "quick" if args.quick else "full"
        settings = MODES[mode]
        repeats = args.repeats or settings["repeats"]
        tiers = {"core"} if args.quick else {"core", "full", "once"}
        if args.candidates:
            tiers.add("candidate")
        if args.e2e:
            tiers.add("e2e")
        only = [s for s in args.only.split(",") if s]
        configs = [c for c in CONFIGS if (c["id"] in only if only else c["tier"] in tiers)]
        if not configs:
            p.error(f"no config selected (ids: {', '.join(c['id'] for c in CONFIGS)})")
        first_rep = 0
        runs = {c["id"]: [] for c in configs}
        elapsed_before = 0.0
    only = [s for s in args.only.split(",") if s]

    machine, vers = machine_info(), versions()
    print(f"{machine['cpu']}, {machine['cores']} cores, bf16: {machine['bf16_hardware']}; "
          f"tf {vers['tf']}, keras {vers['keras']}, torch {vers['torch']}; {mode}, "
          f"{repeats} repeat(s), {len(configs)} configs", flush=True)
    if saved and (saved["versions"] != vers or saved["machine"] != machine):
        raise SystemExit("--add-repeats: the saved run is from another machine or versions")
    t_start = time.perf_counter()
    for rep in range(first_rep, repeats):
        todo = [c for c in configs if rep == 0 or c["tier"] != "once"]
        shift = rep % len(todo)
        for c in todo[shift:] + todo[:shift]:  # rotate the order every repeat
            r = run_worker(c, settings)
            r["repeat"] = rep
            runs[c["id"]].append(r)
            if "error" in r:
                what = "ERROR " + r["error"][:300]
            elif "skipped" in r:
                what = "skipped: " + r["skipped"]
            elif "train_ips" in r:
                what = (f"train {r['train_ips']:7.2f} img/s  infer {r.get('infer_ips', 0):7.2f}"
                        f" img/s  rss {r.get('peak_rss_mib_train', 0):,.0f} MiB")
            else:
                what = (f"fp32 {r['matmul_gflops_fp32']:7.1f} GFLOP/s  "
                        f"bf16 {r['matmul_gflops_bf16']:7.1f} GFLOP/s")
            print(f"[{time.perf_counter() - t_start:6.0f}s] rep {rep + 1}/{repeats} "
                  f"{c['id']:<28} {what}  ({r.get('wall_s', 0):.0f}s)", flush=True)

    rows = [aggregate(c, runs[c["id"]]) for c in configs]
    results = dict(
        machine=machine,
        versions=vers,
        date=_common.now_utc(),
        mode=mode,
        repeats=repeats,
        batch=BATCH,
        elapsed_s=round(elapsed_before + time.perf_counter() - t_start, 1),
        settings=settings,
        rows=rows,
        raw_runs=runs,
    )
    results["summary"] = summarize(rows, runs)
    if only or args.candidates:
        # Experiments accumulate: each run is appended to the "runs" list of the file.
        path = CANDIDATES_PATH
        previous = []
        if os.path.exists(path):
            with open(path) as f:
                previous = json.load(f).get("runs", [])
        os.makedirs(RESULTS, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"runs": previous + [results]}, f, indent=1)
    else:
        path = JSON_PATH
        write_results(results, JSON_PATH, CSV_PATH)
    print()
    print(render_table(results))
    print(f"\nwrote {os.path.relpath(path)}; {results['elapsed_s']:.0f} s")


README_START = "<!-- speed-table:start (python bench/bench_train.py --table --update-readme) -->"
README_END = "<!-- speed-table:end -->"


def update_readme(table, path=README_PATH):
    with open(path) as f:
        text = f.read()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{path} has no speed-table markers")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    with open(path, "w") as f:
        f.write(head + README_START + "\n" + table + "\n" + README_END + tail)


if __name__ == "__main__":
    main()
