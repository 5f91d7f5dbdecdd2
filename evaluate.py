"""Evaluate a trained AlexNet as the paper reports it: top-1 / top-5 error (Tables 1, 2).

    python evaluate.py --top5 --checkpoint runs/default --data-dir DIR        # centre crop
    python evaluate.py --top5 --ten-crop --checkpoint runs/default --data-dir DIR
    python evaluate.py --top5 --checkpoint RUN --tfds imagenet2012 --data-dir ~/tensorflow_datasets
    python evaluate.py --checkpoint RUN --predict photo.jpg [more.jpg DIR ...]

--checkpoint is a train.py run directory (best.keras, else last.keras), a model directory
of keras_alexnet.convert (model.keras), a .keras file, or named published weights
(imagenet = bvlc_alexnet, caffenet, torchvision: downloaded, verified and converted once;
python -m keras_alexnet.pretrained list). The run's preprocessing (crop
and resize size, mean, channel order, class order; keras_alexnet.runs.open_run) is used. A .keras file outside a run needs --stats FILE or --mean none.
--ten-crop: the paper's ten-crop test (§4.1), the softmax averaged over the four corner
crops, the centre crop and their horizontal reflections. Models that would run code on
loading (Lambda layers) are refused unless --unsafe-load. Exit code 2: bad arguments,
paths or data.
"""

import argparse
import json
import os
import sys
from pathlib import Path


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="run directory of train.py, a model directory or .keras file, or named "
                   "published weights (imagenet, bvlc_alexnet, caffenet, torchvision)")
    d = p.add_argument_group("data (to measure error rates)")
    d.add_argument("--data-dir", help="ImageNet-style folder (DIR/val/<class>/...), or the TFDS data dir with --tfds")
    d.add_argument("--tfds", metavar="NAME", help="a prepared TFDS dataset, e.g. imagenet2012 or imagenette")
    d.add_argument("--manual-dir", help="TFDS manual dir holding the imagenet2012 tars")
    d.add_argument("--split", default="val", help="split to evaluate (default val)")
    o = p.add_argument_group("what to report")
    o.add_argument("--top5", action="store_true", help="report top-5 error too (default: top-1 only)")
    o.add_argument("--ten-crop", action="store_true", help="the paper's ten-crop test instead of the centre crop")
    o.add_argument("--results-file", help="write the results as JSON here")
    o.add_argument("--predict", nargs="+", metavar="IMAGE", help="print the top-5 classes of these images (files or directories)")
    r = p.add_argument_group("preprocessing (from the run; required for a .keras file outside a run)")
    r.add_argument("--stats", help=".npz of the training set's statistics (python -m keras_alexnet.stats)")
    r.add_argument("--mean", metavar="MODE", help="what to subtract: image, channel or none (default: the run's)")
    r.add_argument("--resize-size", type=positive_int, help="shorter side before cropping (default: the run's, or crop * 256 / 227)")
    r.add_argument("--class-index", choices=("auto", "imagenet", "compact"), default="auto",
                   help="for a .keras file outside a run: how data folders are indexed (default auto)")
    s = p.add_argument_group("run")
    s.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default 32)")
    s.add_argument("--unsafe-load", action="store_true",
                   help="allow a model file that runs code when loaded (Lambda layers); only for files you trust")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--verbose", action="store_true",
                   help="show TensorFlow's C++ start-up logs (hidden unless TF_CPP_MIN_LOG_LEVEL is set)")
    args = p.parse_args(argv)

    if not args.data_dir and not args.predict:
        p.error("nothing to do: give --data-dir DIR (with --tfds NAME for a TFDS dataset) to measure "
                "error rates, or --predict IMAGE ... for predictions")
    if args.tfds and not args.data_dir:
        p.error("--tfds needs --data-dir (the TFDS data directory); nothing is downloaded")
    if not Path(args.checkpoint).expanduser().exists():
        from keras_alexnet import pretrained  # imports TensorFlow: only when needed

        if not (pretrained.canonical_name(args.checkpoint) or pretrained.is_url(args.checkpoint)):
            p.error(f"--checkpoint: {args.checkpoint} does not exist (nor is it named "
                    f"weights: {', '.join(pretrained.names())})")
    for flag in ("data_dir", "manual_dir", "stats"):
        value = getattr(args, flag)
        if value and not Path(value).expanduser().exists():
            p.error(f"--{flag.replace('_', '-')}: {value} does not exist")
    for image in args.predict or ():
        if not Path(image).expanduser().exists():
            p.error(f"--predict: {image} does not exist")
    if args.results_file:
        parent = Path(args.results_file).expanduser().parent
        if not parent.is_dir():
            p.error(f"--results-file: directory {parent} does not exist")
    return args


def main(argv=None, own_process=False):
    args = parse_args(argv)
    if args.verbose:  # read when the package first imports TensorFlow (keras_alexnet/console.py)
        os.environ["KERAS_ALEXNET_VERBOSE"] = "1"

    # Heavy imports only after the flags are known to be good.
    from keras_alexnet import datasets, evaluation, pretrained, run_files, runs, sources, startup
    if own_process:  # run from the shell, not called by a notebook or test
        startup.own_process()

    crops = "ten" if args.ten_crop else "center"
    try:
        run = runs.open_run(
            args.checkpoint, stats=args.stats, mean=args.mean, resize_size=args.resize_size,
            class_index=args.class_index, unsafe=args.unsafe_load)
        pre = run.preprocessing
        model = run.model
        print(f"Model: {run.model_path} ({int(model.output_shape[-1])} classes, "
              f"{pre.crop_size}x{pre.crop_size} crops of the central "
              f"{pre.resize_size}x{pre.resize_size}; mean: {pre.mean_mode}"
              f"{f' from {pre.stats_path}' if pre.stats_path else ''}"
              f"{f'; {pre.channel_order}' if pre.channel_order != 'RGB' else ''})", flush=True)
        for note in run.overrides:
            print(f"Note: overriding the run's preprocessing: {note}", flush=True)
        output = {}
        if args.predict:
            predictions = evaluation.predict_files(run, [Path(p).expanduser() for p in args.predict],
                                                   crops=crops, batch_size=args.batch_size)
            print(evaluation.format_predictions(predictions), flush=True)
            output["predictions"] = predictions
        if args.data_dir:
            source = evaluation.load_eval_source(
                run, Path(args.data_dir).expanduser(), args.split, tfds_name=args.tfds,
                manual_dir=args.manual_dir)
            with datasets.naming_damaged_shard(source):  # a prepared shard damaged inside
                results = evaluation.run_evaluation(
                    run, source, crops=crops, top5=args.top5, batch_size=args.batch_size,
                    progress=not args.quiet)
            print(evaluation.format_results(results), flush=True)
            output.update(evaluation.json_ready(results))
    except (run_files.RunError, sources.DatasetError, pretrained.WeightsError, FileNotFoundError) as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    if args.results_file:
        Path(args.results_file).expanduser().write_text(json.dumps(output, indent=2) + "\n")
        print(f"Wrote {args.results_file}")
    if any("error" in item for item in output.get("predictions", ())):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(own_process=True))
