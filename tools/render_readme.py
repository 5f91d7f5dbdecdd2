"""Renders the README's tables from the files that runs and benchmarks wrote.

    python tools/render_readme.py                 # print every table (markdown)
    python tools/render_readme.py --update-readme # rewrite the marked sections of README.md

Tables are never typed by hand: each section of README.md between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` is the output of one function here.
Run directories (results/*/) are read through `keras_alexnet.run_files`; the speed tables
from bench/results/*.json, the training-speed one by bench/bench_train.py's own
`render_table`.
"""

import argparse
import functools
import importlib.util
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))  # keras_alexnet from this checkout, installed or not



def _machine(m):
    parts = [f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores", f"TensorFlow {m.get('tensorflow', '?')}"]
    parts += [f"{k} {m[v]}" for k, v in (("Keras", "keras"), ("PyTorch", "torch")) if v in m]
    parts.append(str(m.get("date_utc", "?"))[:10])
    load = m.get("load_average_at_start")
    if load:
        parts.append(f"load average {load[0]:.1f} at start (2 cores: other work was running)")
    return ", ".join(parts)


def from_results(results, script):
    """A table function's decorator: it is called with bench/results/``results`` read, or
    the table says which ``script`` writes that file."""
    def wrap(table):
        @functools.wraps(table)
        def render():
            path = RESULTS / results
            if not path.is_file():
                return f"(no {path.relative_to(ROOT)} yet: run `python bench/{script}`)"
            return table(json.loads(path.read_text()))
        return render
    return wrap


@from_results("pipeline.json", "bench_pipeline.py")
def pipeline_table(d):
    lines = ["| input pipeline (real JPEGs) | images/s | CPU ms / image | images/s per busy core | per-core ratio to PIL |",
             "|---|---|---|---|---|"]
    for name, r in d["summary"].items():
        lines.append(f"| {name} | {r['images_per_s']:.0f} | {r['cpu_ms_per_image']:.2f} | "
                     f"{r['images_per_s_per_busy_core']:.0f} | {r['per_core_ratio_vs_pil']:.2f} |")
    lines.append(f"\n{d['data']['files']} files of {d['data']['location']}; {_machine(d['machine'])}. "
                 f"`bench/results/pipeline.json`, from `python bench/bench_pipeline.py`.")
    return "\n".join(lines)


@from_results("prepared_pipeline.json", "bench_prepared.py")
def prepared_table(d):
    lines = ["| training input, same photos | images/s | CPU ms / image | images/s per busy core | x raw folder | x PIL peer |",
             "|---|---|---|---|---|---|"]
    for name, r in d["summary"].items():
        lines.append(f"| {name} | {r['images_per_s']:.0f} | {r['cpu_ms_per_image']:.2f} | "
                     f"{r['images_per_s_per_busy_core']:.0f} | {r['per_core_x_raw']:.2f} | {r['per_core_x_pil']:.2f} |")
    p = d["prepare"]
    lines.append(f"\n{d['data']['files']} training files (100 full-size photos x {d['data']['repeat']}), "
                 f"stored as {d['encoding']}; `prepare` itself, one process: {p['images_per_s_per_busy_core']:.0f} "
                 f"images/s per busy core, {p['bytes_per_image'] / 1e3:.0f} KB per image. {_machine(d['machine'])}. "
                 "`bench/results/prepared_pipeline.json`, from `python bench/bench_prepared.py`.")
    raw, prepared = (d["summary"][k]["images_per_s_per_busy_core"] for k in ("raw folder (tf.data)", "prepared (tf.data)"))
    lines.append(f"\nIn cores per GPU: one A100 trains this network at about {A100_IMAGES_PER_S:,} images/s "
                 f"(tf_cnn_benchmarks' AlexNet, fp16). From full-size folders that takes about "
                 f"{A100_IMAGES_PER_S:,} / {raw:,.0f} = {A100_IMAGES_PER_S / raw:.0f} busy cores of input; from "
                 f"prepared shards about {A100_IMAGES_PER_S:,} / {prepared:,.0f} = {A100_IMAGES_PER_S / prepared:.0f}.")
    return "\n".join(lines)


# tf_cnn_benchmarks' AlexNet on one A100 in fp16 (the figure the prepared-data issue quotes).
A100_IMAGES_PER_S = 16_500


@from_results("prepared_vs_raw.json", "bench_prepared_vs_raw.py")
def prepared_vs_raw_table(d):
    lines = ["| training input | final validation top-1 error, by seed | mean | sd |", "|---|---|---|---|"]
    for name, r in d["summary"].items():
        lines.append(f"| {name} | {' / '.join(f'{e:.1%}' for e in r['finals'])} | {r['final_mean']:.1%} | "
                     f"{r['final_stdev']:.1%} |")
    v = d["verdict"]
    lines.append(f"\nSeeds {', '.join(map(str, d['seeds']))}; {d['epochs']} epochs of the `tiny` recipe on "
                 f"{d['per_class']} Imagenette photos per class (all 1,966 validation photos), prepared at 76 px. "
                 f"Prepared minus raw: {v['difference']:+.1%}, standard error of that difference "
                 f"{v['standard_error']:.1%}: {'within' if v['within_2_standard_errors'] else 'outside'} two "
                 f"standard errors. {_machine(d['machine'])}. `bench/results/prepared_vs_raw.json`, from "
                 "`python bench/bench_prepared_vs_raw.py`.")
    return "\n".join(lines)


@from_results("prepare_encoding.json", "bench_prepare_encoding.py")
def encoding_table(d):
    lines = ["| stored 256x256 square | KB / image | decode ms / image (1 thread) | max / mean abs difference to the on-the-fly square |",
             "|---|---|---|---|"]
    for name, r in d["results"].items():
        lines.append(f"| {name} | {r['bytes_per_image_mean'] / 1e3:.1f} | {r['decode_ms_per_image']:.2f} | "
                     f"{r['max_abs_diff']:.1f} / {r['mean_abs_diff']:.2f} |")
    lines.append(f"\n{d['images']} ImageNet photos (median {int(d['median_source_shape_hw'][1])}x"
                 f"{int(d['median_source_shape_hw'][0])}); {_machine(d['machine'])}. "
                 "`bench/results/prepare_encoding.json`, from `python bench/bench_prepare_encoding.py`.")
    return "\n".join(lines)


@from_results("eval_speed.json", "bench_eval.py")
def eval_table(d):
    lines = ["| evaluation, batch %d | images/s | crops/s | CPU ms / image |" % d["batch_size"], "|---|---|---|---|"]
    for name, r in d["summary"].items():
        lines.append(f"| {name} | {r['images_per_s']:.1f} | {r.get('crops_per_s', r['images_per_s']):.1f} | "
                     f"{r['cpu_ms_per_image']:.1f} |")
    lines.append(f"\nFull-size model ({d['model']['parameters']:,} parameters), {d['data']['images']} images of "
                 f"{Path(d['data']['location']).name}; {_machine(d['machine'])}. `bench/results/eval_speed.json`, "
                 f"from `python bench/bench_eval.py`.")
    return "\n".join(lines)


def _bench_function(script, function):
    """``function`` of bench/``script``. bench/ is not a package: the script is loaded by path."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / "bench" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, function)


@from_results("train_speed.json", "bench_train.py")
def train_speed_table(d):
    return _bench_function("bench_train.py", "render_table")(d)


@from_results("backends.json", "bench_backends.py")
def backends_table(d):
    return _bench_function("bench_backends.py", "table_markdown")(d)


def _recipe_changes(config):
    """The recipe fields a run set differently from its preset, as ``field=value``."""
    from keras_alexnet import recipes

    name = config["data"].get("preset") or "paper"
    base = recipes.preset(name).to_dict()
    changed = []
    for key, value in config["recipe"].items():
        default = base.get(key)
        if isinstance(default, tuple):
            default = list(default)
        if value != default:
            changed.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return name + (" with " + ", ".join(changed) if changed else "")


def _curves(run_dir):
    """The run's training-curves PNG: beside its files, or in its figures/ folder."""
    from keras_alexnet import run_files
    from keras_alexnet.figures import CURVES_FILE

    for path in (run_dir / CURVES_FILE, run_dir / run_files.FIGURES_DIR / CURVES_FILE):
        if path.is_file():
            return path
    return None


def runs_table(runs_dir=ROOT / "results"):
    """One row per finished run directory under results/ (one with a summary), then each
    run's curves (``training_curves.png``, from `python -m keras_alexnet.visualize`)."""
    from keras_alexnet import run_files

    rows = ["| run | data | recipe | epochs | val top-1 / top-5 error (last epoch) | "
            "best val top-1 error (epoch) | best top-1 accuracy | hours |",
            "|---|---|---|---|---|---|---|---|"]
    figures = []
    for run in sorted(d for d in Path(runs_dir).iterdir() if d.is_dir()):
        s = run_files.read_summary(run)
        if s is None:  # not finished (or not a run)
            continue
        config = run_files.read_config(run)
        f, b = s["final"], s["best"]
        data = Path(config["data"].get("data_dir") or "").name or config["data"].get("tfds")
        rows.append(f"| `{run.name}` | {data} ({s['train_images']:,} train / {s['val_images']:,} val images, "
                    f"{s['num_classes']} classes) | {_recipe_changes(config)} | "
                    f"{s['epochs']} | {f['val_top1_error']:.1%} / {f['val_top5_error']:.1%} | "
                    f"{b['val_top1_error']:.1%} ({b['epoch']}) | {1 - b['val_top1_error']:.1%} | "
                    f"{s['total_epoch_seconds'] / 3600:.2f} |")
        png = _curves(run)
        if png is not None:
            figures.append(f"![training curves of {run.name}]({png.relative_to(ROOT)})")
    if len(rows) == 2:
        return "(no run in results/ yet)"
    return "\n".join(rows + ([""] + figures if figures else []))


SECTIONS = {"runs": runs_table, "train-speed": train_speed_table, "pipeline-speed": pipeline_table,
            "eval-speed": eval_table, "prepared-speed": prepared_table, "prepare-encoding": encoding_table,
            "prepared-vs-raw": prepared_vs_raw_table, "backend-speed": backends_table}


def update_readme(path=ROOT / "README.md"):
    text = path.read_text()
    for name, fn in SECTIONS.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda m: m.group(1) + fn() + "\n" + m.group(2), text)
    path.write_text(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args()
    if args.update_readme:
        update_readme()
        print("README.md updated")
    else:
        for name, fn in SECTIONS.items():
            print(f"## {name}\n\n{fn()}\n")


if __name__ == "__main__":
    main()
