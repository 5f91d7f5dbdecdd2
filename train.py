"""Train AlexNet with the paper's recipe (or another preset) on model.fit.

    python train.py                                  # built-in default: a small dataset
                                                     # it draws itself, ~3 min on 2 cores
    python train.py --data-dir /data/imagenet        # DIR/train/<wnid>/*.JPEG, DIR/val/...
    python train.py --tfds imagenette --data-dir ~/tensorflow_datasets
    python train.py --data-dir DIR --preset original # Krizhevsky's 2012 code
    python train.py --data-dir DIR --weights RUN     # fine-tune a trained network on DIR's classes

Run the same command again to resume a killed run. See README.md for every flag.
"""

import argparse
import os
import shlex
import sys
from pathlib import Path

PRESETS = ("paper", "original", "caffe", "tiny", "finetune")

EXIT_BAD_INPUT = 2  # bad flags or data, another run's directory, a locked or damaged run
EXIT_DIVERGED = 3  # the loss became NaN / inf; nothing of that epoch was saved
EXIT_WRITE_FAILED = 4  # a file could not be written (full disk, read-only, quota)
EXIT_INPUT_STALLED = 5  # --data-service: no training batch for --data-service-timeout (callbacks.InputWatchdog)

EPILOG = f"""exit status:
  0  the run finished
  {EXIT_BAD_INPUT}  bad flags or data; a run with another configuration in --output-dir; another
     process is training in --output-dir (it holds OUTPUT_DIR/.lock); a damaged training
     state with no complete checkpoint left
  {EXIT_DIVERGED}  the loss became NaN or infinite: training stopped at that step and nothing of
     that epoch was saved (checkpoint.json, best.keras and last.keras keep the last finite
     epoch); the message gives a lower --lr and the command that resumes (with
     --on-divergence recover, a divergence instead restarts from the last good state at a
     tenth of the rate, at most --max-recoveries times, then exits 3)
  {EXIT_WRITE_FAILED}  a file could not be written (full disk, read-only directory, quota): no
     temporary file is left and checkpoint.json names the last whole checkpoint; run the same
     command again once the disk has room
  {EXIT_INPUT_STALLED}  --data-service: no training batch came for --data-service-timeout seconds
     (a tf.data service worker died mid-pass); every saved epoch is whole: run the same
     command to resume
"""


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def stddev_value(text):
    if text == "he":
        return text
    return non_negative_float(text)


def int_list(text):
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs like 25,51,79, got {text!r}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data-dir", help="ImageNet-style folder (with train/ and val/), or the TFDS data dir with --tfds. "
                   "Without it and --tfds: the built-in synthetic dataset.")
    d.add_argument("--tfds", metavar="NAME", help="a prepared TFDS dataset, e.g. imagenet2012 or imagenette")
    d.add_argument("--manual-dir", help="TFDS manual dir holding ILSVRC2012_img_{train,val}.tar")
    d.add_argument("--train-split", default="train")
    d.add_argument("--val-split", default="val")
    d.add_argument("--class-index", choices=("auto", "imagenet", "compact"), default="auto",
                   help="imagenet: 1000 ImageNet indices for wnid folders; compact: 0..K-1 (default: auto)")
    d.add_argument("--stats", help=".npz from `python -m keras_alexnet.stats` (default: compute and save in the run)")
    d.add_argument("--stats-max-images", type=positive_int, default=50_000)

    r = p.add_argument_group("recipe (a preset, then these overrides)")
    r.add_argument("--preset", choices=PRESETS, default=None,
                   help="paper (default with data), original (2012 code), caffe (bvlc_alexnet), tiny (default without "
                        "data), finetune (default with --weights)")
    r.add_argument("--weights", metavar="SPEC",
                   help="fine-tune: start from this network (named published weights: imagenet = bvlc_alexnet, "
                        "caffenet, torchvision; a run directory of train.py, a model directory of "
                        "keras_alexnet.convert, or a .keras in one) with a new fc8 for the data's classes; its "
                        "shape and input preprocessing are the source's")
    r.add_argument("--freeze-until", metavar="LAYER",
                   help="conv1 ... conv5, fc6 or fc7: this layer and all before it are not trained (with "
                        "--weights: they keep the source's weights)")
    r.add_argument("--epochs", type=positive_int)
    r.add_argument("--batch-size", type=positive_int)
    r.add_argument("--lr", dest="learning_rate", type=non_negative_float)
    r.add_argument("--momentum", type=non_negative_float)
    r.add_argument("--weight-decay", type=non_negative_float)
    r.add_argument("--schedule", choices=("plateau", "steps"))
    r.add_argument("--patience", dest="plateau_patience", type=positive_int, help="plateau epochs before lr / 10")
    r.add_argument("--max-lr-reductions", type=int)
    r.add_argument("--lr-steps", type=int_list, help="with --schedule steps: epochs, e.g. 25,51,79")
    r.add_argument("--mean", metavar="MODE",
                   help="what to subtract from each pixel: image (the training set's mean image, §2), channel "
                        "(its RGB mean) or none; default: the preset's")
    r.add_argument("--pca-stddev", type=non_negative_float)
    r.add_argument("--resize-size", type=positive_int)
    r.add_argument("--crop-size", type=positive_int)
    r.add_argument("--fc-units", type=positive_int)
    r.add_argument("--lrn-alpha", type=non_negative_float)
    r.add_argument("--lrn-bias", type=non_negative_float)
    r.add_argument("--no-lrn", dest="lrn", action="store_false", default=None)
    r.add_argument("--positive-bias", type=float)
    r.add_argument("--weight-stddev", type=stddev_value,
                   help="initial weight stddev of every layer (paper 0.01), or 'he' for N(0, 2/fan_in)")
    r.add_argument("--input-scale", type=float, help="multiply the input by this (paper 1: raw pixels minus mean)")
    r.add_argument("--dropout", type=non_negative_float)
    r.add_argument("--seed", type=int)

    s = p.add_argument_group("run")
    s.add_argument("--output-dir", help="run directory (default runs/<preset or default>)")
    s.add_argument("--precision", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"), default="auto",
                   help="auto: bf16 only where the hardware computes it (AMX/AVX512_BF16 CPUs, GPUs >= 8.0)")
    s.add_argument("--xla", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="compile the train step with XLA; auto: only where it measured faster "
                        "(bf16 on a CPU without bf16 instructions)")
    s.add_argument("--steps-per-execution", type=positive_int, default=1)
    s.add_argument("--grouping", choices=("towers", "grouped", "none"),
                   help="default towers (with --weights: the source's)")
    s.add_argument("--devices", help="two devices for the towers, e.g. /GPU:0,/GPU:1 (default: two GPUs if present)")
    s.add_argument("--strategy", choices=("auto", "default", "mirrored", "multi-worker"), default="auto")
    s.add_argument("--max-steps-per-epoch", type=positive_int, help="cap steps per epoch (smoke runs)")
    s.add_argument("--data-service", metavar="grpc://HOST:PORT",
                   help="make the training input on tf.data service workers (python -m keras_alexnet.data_service)")
    s.add_argument("--data-service-timeout", type=positive_int, default=600, metavar="SECONDS",
                   help="with --data-service: exit (status 5, resumable) when no training batch came for this long")
    s.add_argument("--on-divergence", choices=("stop", "recover"), default="stop",
                   help="when the loss becomes NaN/inf: stop (exit 3), or recover: go back to the last good "
                        "checkpoint (or the initial weights) with the learning rate / 10 (default: stop)")
    s.add_argument("--max-recoveries", type=positive_int, default=3,
                   help="with --on-divergence recover: at most this many recoveries in the run (default 3)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--verbose", action="store_true",
                   help="show TensorFlow's C++ start-up logs (hidden unless TF_CPP_MIN_LOG_LEVEL is set)")
    args = p.parse_args(argv)

    if args.tfds and not args.data_dir:
        p.error("--tfds needs --data-dir (the TFDS data directory); nothing is downloaded")
    for flag in ("data_dir", "manual_dir", "stats"):
        value = getattr(args, flag)
        if value and not Path(value).expanduser().exists():
            p.error(f"--{flag.replace('_', '-')}: {value} does not exist")
    if args.devices:
        args.devices = tuple(d.strip() for d in args.devices.split(","))
        if len(args.devices) != 2:
            p.error(f"--devices needs two device names, got {args.devices}")
    return args, p


def main(argv=None, own_process=False):
    args, parser = parse_args(argv)
    if args.verbose:  # read when the package first imports TensorFlow (keras_alexnet/console.py)
        os.environ["KERAS_ALEXNET_VERBOSE"] = "1"
    builtin = not args.data_dir and not args.tfds
    preset = args.preset or ("finetune" if args.weights else "tiny" if builtin else "paper")
    output_dir = args.output_dir or f"runs/{'default' if builtin else preset}"

    # Heavy imports only after the flags are known to be good.
    from keras_alexnet import backends, callbacks, figures, finetune, hardware, preprocessing, recipes, run_files, sources, startup, synthetic, training
    if own_process:  # run from the shell, not called by a notebook or test
        startup.own_process()

    # Multi-worker collectives must be configured before TensorFlow runs any op.
    try:
        strategy = hardware.make_strategy(args.strategy)
    except (ValueError, RuntimeError) as e:
        print(f"train.py: error: --strategy {args.strategy}: {e}", file=sys.stderr)
        return 2
    overrides = {k: getattr(args, k) for k in (
        "epochs", "batch_size", "learning_rate", "momentum", "weight_decay", "schedule", "plateau_patience",
        "max_lr_reductions", "lr_steps", "mean", "pca_stddev", "resize_size", "crop_size", "fc_units",
        "lrn_alpha", "lrn_bias", "lrn", "positive_bias", "weight_stddev", "input_scale", "dropout", "seed",
        "freeze_until")}
    try:
        # Checked before --weights, which may download and convert on first use.
        if args.freeze_until is not None and not args.weights:
            raise ValueError("--freeze-until needs --weights: it keeps layers of a trained source as "
                             "they are (without one they would stay at their random initialisation)")
        if args.freeze_until is not None and args.freeze_until not in finetune.FREEZABLE:
            raise ValueError(f"--freeze-until must be one of {', '.join(finetune.FREEZABLE)}, got "
                             f"{args.freeze_until!r}")
        weights = None
        if args.weights:
            weights = finetune.open_source(args.weights)
            conflicts = weights.conflicts(overrides)
            source_grouping = weights.architecture()[1]
            if args.grouping and args.grouping != source_grouping:
                conflicts.append(f"grouping {args.grouping!r} (the source's is {source_grouping!r})")
            if conflicts:
                raise ValueError(f"--weights {args.weights} fixes the network's shape and input; drop "
                                 f"the flags that change them: {'; '.join(conflicts)}")
        recipe = recipes.resolve(preset, overrides)
        preprocessing.check_mean_mode(recipe.mean)
        if recipe.crop_size > recipe.resize_size:
            raise ValueError(f"--crop-size {recipe.crop_size} is larger than --resize-size {recipe.resize_size}")
        if builtin:
            data_dir = synthetic.default_dataset()
            print(f"No --data-dir: using the built-in synthetic dataset in {data_dir}", flush=True)
        else:
            data_dir = Path(args.data_dir).expanduser()
        run_data = training.DataSpec(str(data_dir), tfds=args.tfds, train_split=args.train_split,
                                     val_split=args.val_split, class_index=args.class_index,
                                     manual_dir=args.manual_dir).load()
        settings = training.RunSettings(
            output_dir=output_dir, precision=args.precision, xla={"auto": "auto", "on": True, "off": False}[args.xla],
            steps_per_execution=args.steps_per_execution, grouping=args.grouping or "towers", devices=args.devices,
            strategy=args.strategy, stats_max_images=args.stats_max_images,
            max_steps_per_epoch=args.max_steps_per_epoch, verbose=0 if args.quiet else 1,
            on_divergence=args.on_divergence, max_recoveries=args.max_recoveries, data_service=args.data_service,
            data_service_timeout_s=args.data_service_timeout)
    except (ValueError, OSError, run_files.RunError) as e:  # bad paths, data, values; weights not had
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2

    try:
        summary = training.train(recipe, run_data, settings, preset=preset, stats_path=args.stats, strategy=strategy,
                                 after_run=figures.record_training_curves, weights=weights)
    except callbacks.TrainingDiverged as e:
        argv = list(sys.argv[1:] if argv is None else argv)
        print(divergence_message(e, argv, recipe.learning_rate), file=sys.stderr)
        return EXIT_DIVERGED
    except run_files.RunWriteError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except backends.NeedsTensorFlow as e:  # --devices, --data-service on JAX or PyTorch
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (run_files.RunError, sources.DatasetError) as e:  # another configuration, a locked or damaged
        print(f"train.py: error: {e}", file=sys.stderr)      # run directory; prepared data that do not fit
        return EXIT_BAD_INPUT
    print("\n" + training.format_summary(summary))
    return 0


def command_with(argv, **flags):
    """``python train.py ARGV`` as a shell command, with ``flags`` (``output_dir="X"`` for
    ``--output-dir X``) replacing the same flags of ``argv``."""
    names = {f"--{k.replace('_', '-')}": v for k, v in flags.items()}
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in names:
            skip = "=" not in arg
            continue
        out.append(arg)
    for name, value in names.items():
        out += [name, str(value)]
    return shlex.join(["python", "train.py", *out])


def divergence_message(error, argv, base_lr):
    """What train.py prints when the loss became non-finite: where, at what rate, what
    was kept, and the commands to try."""
    run_dir = error.run_dir
    lower = float(f"{base_lr / 10:.3g}")  # --lr is the initial rate
    fresh_dir = f"{str(run_dir).rstrip('/')}-lr{lower:g}"
    lines = [f"train.py: error: {error}"
             + (f", after {error.recoveries} recoveries (--max-recoveries)." if error.recoveries else "."),
             f"Nothing of epoch {error.epoch} was saved."]
    if error.last_good_epoch:
        lines.append(f"{run_dir}/checkpoint.json, best.keras and last.keras still hold the last finite "
                     f"state (epoch {error.last_good_epoch}).")
    else:
        lines.append(f"No model was written to {run_dir}: the first epoch diverged.")
    lines += ["What to try: a lower learning rate (--lr), 10x lower, in a new run directory (the "
              "rate is part of the run's configuration):",
              f"  {command_with(argv, lr=f'{lower:g}', output_dir=fresh_dir)}"]
    if error.last_good_epoch:
        lines += [f"or resume this run from its last good checkpoint (epoch {error.last_good_epoch}), "
                  "dividing the rate by 10 whenever it diverges:",
                  f"  {command_with(argv, on_divergence='recover')}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(own_process=True))
