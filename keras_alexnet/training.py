"""The paper's training recipe (docs/paper.md §5) on `model.fit`, with runs that survive a kill.

A run starts in one way, whoever starts it (``train.py``, the notebooks' brief run, the
tests)::

    data = training.DataSpec("/data/imagenet").load()      # the sources, checked
    settings = training.RunSettings(output_dir="runs/paper")
    summary = training.train(recipes.resolve("paper"), data, settings, preset="paper")

`train` writes ``config.json`` from its arguments, builds and compiles the model, and
fits it with the callbacks of `keras_alexnet.callbacks`. What it writes into the run
directory, and how each file is written so that a kill at any moment loses nothing, is
the business of `keras_alexnet.run_files` and `keras_alexnet.training_state`. Precision, XLA and the distribution strategy are chosen
by `keras_alexnet.hardware`.
"""

import dataclasses
import os
import time
import warnings
from pathlib import Path

import keras
import tensorflow as tf

from keras_alexnet import data as data_lib
from keras_alexnet import datasets
from keras_alexnet import finetune
from keras_alexnet import keras_compat
from keras_alexnet import run_files, sources, training_state
from keras_alexnet import stats as stats_lib
from keras_alexnet.callbacks import (
    MONITOR,
    RECOVERY_FACTOR,
    DivergenceGuard,
    EpochInfo,
    InputWatchdog,
    PlateauSchedule,
    SaveTrainingState,
    StepSchedule,
    TrainingDiverged,
    learning_rate,
    set_learning_rate,
)
from keras_alexnet.backends import on_tensorflow, require_tensorflow
from keras_alexnet.hardware import choose_precision, choose_xla, make_strategy, worker_info
from keras_alexnet.metrics import error_metrics
from keras_alexnet.model import AlexNet


# Optimiser -----------------------------------------------------------------------------


def paper_regularizer(weight_decay):
    """The L2 regulariser whose gradient is the paper's ``weight_decay * w``.

    Keras' ``L2(l)`` adds ``l * sum(w**2)`` to the loss, whose gradient is ``2 l w``, so
    the paper's decay of 0.0005 (docs/paper.md §5) is ``L2(0.00025)``.
    """
    return keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None


def paper_optimizer(recipe):
    """SGD with momentum (docs/paper.md §5). With `paper_regularizer` on the kernels, one step is
    ``v <- momentum v - weight_decay lr w - lr dL/dw``, ``w <- w + v``."""
    return keras.optimizers.SGD(learning_rate=recipe.learning_rate, momentum=recipe.momentum)


def restore_into(model, model_path):
    """Copies weights and optimizer state from a checkpoint into a compiled ``model``."""
    saved = keras.models.load_model(model_path, compile=True)
    model.set_weights(saved.get_weights())
    model.optimizer.build(model.trainable_variables)
    saved_vars, own_vars = saved.optimizer.variables, model.optimizer.variables
    if len(saved_vars) != len(own_vars):
        raise ValueError(
            f"{model_path}: the checkpoint's optimizer has {len(saved_vars)} variables, this run's "
            f"{len(own_vars)}; was it written with another --precision or optimizer?")
    for own, value in zip(own_vars, saved_vars):
        own.assign(value)


# The run -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where a run's images come from (``train.py``'s data flags).

    Attributes:
        data_dir: an ImageNet-style folder (``DIR/train/<class>/*``, ``DIR/val/...``), a
            directory written by ``python -m keras_alexnet.prepare`` (found by its
            ``manifest.json``), or the TFDS data directory when ``tfds`` is set.
        tfds: a prepared TFDS dataset name (``imagenet2012``, ``imagenette``), or None.
        train_split, val_split: the split names.
        class_index: ``"auto"``, ``"imagenet"`` (the 1000 ImageNet indices for wnid
            folders) or ``"compact"`` (0..K-1).
        manual_dir: the TFDS manual directory (``imagenet2012``'s tars), or None.
    """

    data_dir: str
    tfds: str = None
    train_split: str = "train"
    val_split: str = "val"
    class_index: str = "auto"
    manual_dir: str = None

    def load(self):
        """The training and validation sources (`RunData`); the validation classes
        follow the training source's order.

        Raises:
            keras_alexnet.sources.DatasetError (a ValueError), FileNotFoundError: missing or
                bad data, or a validation split with another number of classes.
        """
        kwargs = dict(tfds_name=self.tfds, manual_dir=self.manual_dir, class_index=self.class_index)
        train_source = datasets.load_source(self.data_dir, self.train_split, **kwargs)
        val_source = datasets.load_source(self.data_dir, self.val_split, class_names=train_source.class_names,
                                          **kwargs)
        if val_source.num_classes != train_source.num_classes:
            raise sources.DatasetError(f"{val_source.location} has {val_source.num_classes} classes, "
                                        f"{train_source.location} {train_source.num_classes}")
        return RunData(self, train_source, val_source)


@dataclasses.dataclass(frozen=True)
class RunData:
    """The loaded sources of a `DataSpec` (`DataSpec.load`)."""

    spec: DataSpec
    train: sources.Source
    val: sources.Source

    def config(self, preset=None):
        """``config.json``'s ``"data"``: what a resume must find unchanged."""
        return {"data_dir": str(self.spec.data_dir), "tfds": self.spec.tfds, "train_split": self.spec.train_split,
                "val_split": self.spec.val_split, "class_index": self.train.class_index,
                # The preset the recipe started from (tools/render_readme.py names runs by it).
                "preset": preset}


@dataclasses.dataclass
class RunSettings:
    """How a run executes (not what it computes)."""

    output_dir: str = "runs/default"
    precision: str = "auto"  # "auto" (`choose_precision`), "float32", "mixed_bfloat16", "mixed_float16"
    xla: object = "auto"  # "auto" (`choose_xla`), True or False
    steps_per_execution: int = 1
    grouping: str = "towers"
    devices: tuple = None
    strategy: str = "auto"
    stats_max_images: int = 50_000
    max_steps_per_epoch: int = None
    verbose: int = 1
    on_divergence: str = "stop"  # "stop" (raise TrainingDiverged) or "recover" (last good state, rate / 10)
    max_recoveries: int = 3  # "recover": at most this many times in the whole run
    # grpc://HOST:PORT of a tf.data service dispatcher that makes the training input
    # (keras_alexnet.data_service), or None: this process makes it.
    data_service: str = None
    # With data_service: the process ends (exit 5) when no training batch came for this
    # long (callbacks.InputWatchdog): a pass whose worker died never ends by itself.
    data_service_timeout_s: float = 600.0


def _prepare_stats(train_source, recipe, run_dir, stats_path, max_images, is_chief):
    """Loads ``stats_path``, the run's own ``stats.npz``, or computes and saves it."""
    own = run_dir / run_files.STATS_FILE
    if stats_path:
        stats = run_files.load_stats(stats_path)
    elif own.is_file():
        stats = run_files.load_stats(own)
    else:
        if recipe.mean == "none" and not recipe.pca_stddev:
            return None
        print(f"Computing dataset statistics (mean image, RGB PCA) on up to {max_images} images "
              f"of {train_source.location} ...", flush=True)
        stats = stats_lib.compute_stats(train_source, max_images=max_images, resize_size=recipe.resize_size)
    if stats.resize_size != recipe.resize_size:
        print(f"Note: statistics were computed at {stats.resize_size}px; the mean image is resized to "
              f"{recipe.resize_size}px.")
    if is_chief and not own.is_file():
        run_files.write_stats(run_dir, stats)
    return stats


def run_preprocessing(recipe, stats, weights=None):
    """The `keras_alexnet.preprocessing.Preprocessing` a run's network is fed with: the
    source's when fine-tuning (``weights``, a `keras_alexnet.finetune.SourceWeights`),
    else the recipe's sizes and mean (the mean from ``stats``)."""
    if weights is not None:
        return weights.preprocessing
    return data_lib._preprocessing(stats, recipe.mean, recipe.crop_size, recipe.resize_size)


def _datasets(recipe, train_source, val_source, stats, preprocessing, counter, num_workers, worker_index,
              seed_offset=0, pca=True, max_steps=None, data_service=None):
    train_ds = data_lib.training_dataset(
        train_source,
        recipe.batch_size // num_workers,
        stats=stats,
        preprocessing=preprocessing,
        pca_stddev=recipe.pca_stddev if pca else 0.0,
        seed=recipe.seed + seed_offset,
        num_shards=num_workers,
        shard_index=worker_index,
        counter=counter,
        data_service=data_service,
    )
    val_ds = data_lib.evaluation_dataset(
        val_source,
        recipe.batch_size // num_workers,
        preprocessing=preprocessing,
        num_shards=num_workers,
        shard_index=worker_index,
    )
    # An endless stream cut into epochs of a known number of steps: with a finite stream
    # of unknown length (files can be skipped) Keras probes for its end at every epoch
    # and runs an extra optimizer step (seen: 4 iterations in a 3-step epoch). Each pass
    # over the data is still a full reshuffled pass; a skipped file only shifts where
    # epochs start.
    per_worker = -(-train_source.num_examples // num_workers)
    steps = -(-per_worker // (recipe.batch_size // num_workers))
    if max_steps:  # a short epoch (smoke tests, benchmarks)
        steps = min(steps, max_steps)
    return train_ds.repeat(), val_ds, steps


def build_model(recipe, num_classes, grouping="towers", devices=None, classifier_activation="softmax",
                weights=None):
    """`AlexNet` with the recipe's architecture, initialisation and weight decay; with
    ``weights`` (a `keras_alexnet.finetune.SourceWeights`) every layer but fc8 copied from
    the source; the layers up to ``recipe.freeze_until`` not trainable."""
    model = AlexNet(
        classes=num_classes,
        grouping=grouping,
        devices=devices,
        kernel_regularizer=paper_regularizer(recipe.weight_decay),
        classifier_activation=classifier_activation,
        **recipe.model_kwargs(),
    )
    if weights is not None:
        finetune.copy_weights(weights.run.model, model)
    if recipe.freeze_until:
        finetune.freeze(model, recipe.freeze_until)
    return model


def compile_model(model, recipe, settings):
    model.compile(
        optimizer=paper_optimizer(recipe),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=error_metrics(),
        jit_compile=settings.xla,
        steps_per_execution=settings.steps_per_execution,
    )
    # Built now, not inside the first traced train step: TensorFlow traces a function
    # again when its first trace created variables (the momentum slots): one more trace of
    # the train step, 0.8 s of CPU at every run's start (measured on a tiny run in this
    # process, 3.0 s -> 2.2 s). Layers are already frozen.
    model.optimizer.build(model.trainable_variables)
    return model


def train(recipe, data, settings, *, preset=None, stats_path=None, strategy=None, after_run=None,
          weights=None):
    """Trains (or resumes) a run and returns its summary dict.

    Args:
        recipe: a `keras_alexnet.recipes.Recipe`.
        data: `RunData`, from `DataSpec.load`.
        settings: `RunSettings`.
        preset: the name of the preset the recipe was resolved from, saved in the config.
        stats_path: an ``.npz`` from ``python -m keras_alexnet.stats``; None computes
            (and saves) the statistics of the training source.
        strategy: a `tf.distribute.Strategy`; default `make_strategy(settings.strategy)`.
            `MultiWorkerMirroredStrategy` must be created before TensorFlow runs any op
            (before the sources are listed), so scripts create it first.
        after_run: ``after_run(run_dir)``, called by the chief once the last epoch is
            saved, before ``summary.json`` is written; the dict it returns is added to
            the summary (``train.py`` draws the training curves with it:
            `keras_alexnet.figures.record_training_curves`).
        weights: fine-tuning (``train.py --weights``): a
            `keras_alexnet.finetune.SourceWeights`. The network's shape and input (the
            recipe's `keras_alexnet.finetune.ARCHITECTURE_FIELDS` and the grouping) become
            the source's, every layer but fc8 starts as the source's, and the network is
            fed with the source's preprocessing (PCA noise from this run's statistics).
            ``config.json`` records it (``"weights"``, ``"preprocessing"``); a resume
            must give the same weights.

    Returns:
        The dict also written to ``summary.json``.

    Raises:
        keras_alexnet.run_files.RunLockedError: another process is training in the directory.
        keras_alexnet.run_files.RunWriteError: a file could not be written (a full disk).
        keras_alexnet.run_files.DamagedStateError: a damaged run directory without a checkpoint to use.
        TrainingDiverged: the loss became non-finite (nothing of that epoch is saved).
    """
    run_dir = Path(settings.output_dir)
    if settings.data_service:  # a tf.data.Dataset like any other, but tested on TensorFlow only
        require_tensorflow("Training from the tf.data service (--data-service)")
    if weights is not None:
        recipe, settings = weights.adapt(recipe, settings)
    if settings.precision == "auto":
        settings = dataclasses.replace(settings, precision=choose_precision())
        print(f"Precision: {settings.precision} (chosen for this hardware; --precision to override).", flush=True)
    if settings.xla == "auto":
        settings = dataclasses.replace(settings, xla=choose_xla(settings.precision, settings.grouping))
        if settings.xla and on_tensorflow():  # on JAX it always is
            print("XLA: on (bf16 on a CPU without bf16 instructions runs >2x faster with XLA; "
                  "--xla off to disable).", flush=True)
    if strategy is None:
        strategy = make_strategy(settings.strategy)
    num_workers, worker_index, is_chief = worker_info(strategy)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        keras_compat.patch_multi_worker_reduce()
    if recipe.batch_size % num_workers:
        raise ValueError(f"batch size {recipe.batch_size} is not divisible by {num_workers} workers.")
    # Prepared squares of another size than the network's input: refused before anything is written.
    resize_size = weights.preprocessing.resize_size if weights is not None else recipe.resize_size
    for source in (data.train, data.val):
        data_lib.square_loader(source, resize_size)
    # The precision is the run's, not the process's: the caller's policy comes back after it
    # (a notebook or test that trains, then evaluates, evaluates in its own precision).
    callers_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(settings.precision)
    # One writer per directory (`keras_alexnet.run_files.RunLock`), taken before anything is
    # written: the chief locks the run, worker i its own RUN/workers/<i>.
    own_dir = run_dir if is_chief else run_dir / run_files.WORKERS_DIR / str(worker_index)
    try:
        with run_files.lock_run(own_dir):
            return _train_locked(recipe, data, settings, preset, stats_path, strategy, after_run,
                                 run_dir, num_workers, worker_index, is_chief, weights)
    finally:
        keras.mixed_precision.set_global_policy(callers_policy)


def _train_locked(recipe, data, settings, preset, stats_path, strategy, after_run,
                  run_dir, num_workers, worker_index, is_chief, weights=None):
    train_source, val_source = data.train, data.val
    config = {
        "recipe": recipe.to_dict(),
        "data": data.config(preset),
        "settings": dataclasses.asdict(settings),
        "num_classes": train_source.num_classes,
        "class_names": list(train_source.class_names),
        "class_index": train_source.class_index,
        "versions": run_files.versions(),
        # Relative paths in "data" are relative to this (notebooks resolve them with it).
        "working_dir": os.getcwd(),
    }
    if weights is not None:  # the source, and the input its network takes (runs.open_run reads it)
        config["weights"] = weights.config()
        config["preprocessing"] = dict(weights.preprocessing.to_json(), provenance=f"the source {weights.spec}")
    run_files.check_config(run_dir, config)
    if is_chief:
        if weights is not None and weights.preprocessing.mean_mode == "image":
            run_files.atomic_save_npy(weights.preprocessing.mean, run_dir / run_files.MEAN_IMAGE_FILE)
        run_files.write_config(run_dir, config)

    stats = _prepare_stats(train_source, recipe, run_dir, stats_path, settings.stats_max_images, is_chief)
    preprocessing = run_preprocessing(recipe, stats, weights)

    with strategy.scope():
        model = build_model(recipe, train_source.num_classes, settings.grouping, settings.devices,
                            weights=weights)
        compile_model(model, recipe, settings)

    plateau = steps_schedule = None
    guard = DivergenceGuard()
    callbacks = [EpochInfo(), guard]
    if recipe.schedule == "plateau":
        plateau = PlateauSchedule(MONITOR, recipe.lr_factor, recipe.plateau_patience, recipe.max_lr_reductions)
        callbacks.append(plateau)
    elif recipe.schedule == "steps":
        steps_schedule = StepSchedule(recipe.learning_rate, recipe.lr_steps, recipe.lr_factor)
        callbacks.append(steps_schedule)
    else:
        raise ValueError(f"unknown schedule {recipe.schedule!r}")
    stateful = {name: cb for name, cb in (("plateau", plateau), ("steps", steps_schedule),
                                          ("divergence", guard)) if cb is not None}
    initial = None
    if settings.on_divergence == "recover":  # the start, should epoch 1 diverge
        initial = ([w.copy() for w in model.get_weights()], plateau.get_state() if plateau else None)

    def restore(state):
        """Model, optimizer, history and callback state of a checkpoint; the epoch."""
        try:
            with strategy.scope():
                restore_into(model, state.model_path)
        except Exception as e:  # a model that passed the archive check but does not load
            raise run_files.DamagedStateError(
                f"Cannot resume {run_dir} from {state.model_path}: {type(e).__name__}: {e}. Delete "
                f"{run_dir / run_files.POINTER_FILE} and that file to fall back on an older checkpoint, "
                "or pass another --output-dir.") from e
        history[:] = state.history
        for name, cb in stateful.items():
            if name in state.callbacks and cb is not guard:
                cb.set_state(state.callbacks[name])
        return state.epoch

    history, initial_epoch = [], 0
    state = training_state.read_training_state(run_dir)  # prints which checkpoint, if one was damaged
    if state is not None:
        initial_epoch = restore(state)
        if "divergence" in state.callbacks:
            guard.set_state(state.callbacks["divergence"])
        print(f"Resuming {run_dir} after epoch {initial_epoch} (learning rate {learning_rate(model):.3g}).", flush=True)

    counter = data_lib.SkipCounter()
    if settings.data_service:
        print(f"Training input from the tf.data service {settings.data_service}: undecodable files "
              "are dropped on its workers (logged there), not counted here.", flush=True)
        callbacks.append(InputWatchdog(
            settings.data_service_timeout_s,
            f"train.py: error: no training batch from the tf.data service {settings.data_service} for "
            "{seconds} s (a worker that died mid-pass stalls the pass). Every saved epoch of "
            f"{run_dir} is whole: start a replacement worker if needed and run the same command to "
            "resume."))
    else:
        callbacks.append(data_lib.SkipReport(counter, len(train_source.non_image_files)))
    checkpoint = SaveTrainingState(run_dir, stateful, history, MONITOR, is_chief, worker_index)
    # The checkpoint goes after every callback that adds to the logs or changes state.
    callbacks += [checkpoint]
    if is_chief:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / run_files.TENSORBOARD_DIR), write_graph=False))

    start = time.time()
    while True:
        try:
            _fit_phases(model, recipe, settings, train_source, val_source, stats, preprocessing, counter,
                        num_workers, worker_index, callbacks, initial_epoch)
            break
        except TrainingDiverged as e:
            e.run_dir = run_dir
            e.last_good_epoch = int(history[-1]["epoch"]) if history else None
            e.recoveries = guard.recoveries
            if settings.on_divergence != "recover" or guard.recoveries >= settings.max_recoveries:
                raise
            diverged = e
        # Recovery (--on-divergence recover): back to the last good state, at a tenth of
        # the lower of its rate and the rate that diverged (so a second divergence from
        # the same checkpoint goes to a hundredth, and so on).
        guard.recoveries += 1
        diverged_lr = learning_rate(model)
        diverged_scale = steps_schedule.scale if steps_schedule is not None else 1.0
        state = training_state.read_training_state(run_dir)
        if state is not None:
            initial_epoch, where = restore(state), f"epoch {state.epoch} ({state.model_path})"
        else:  # nothing saved yet: the initial weights, a fresh optimizer and schedule
            weights, plateau_state = initial
            model.set_weights(weights)
            for variable in model.optimizer.variables:
                variable.assign(keras.ops.zeros_like(variable))
            set_learning_rate(model, recipe.learning_rate)
            if plateau is not None:
                plateau.set_state(plateau_state)
            history.clear()
            initial_epoch, where = 0, "the initial weights"
        checkpoint.best = min([r[MONITOR] for r in history if r.get(MONITOR) is not None] or [float("inf")])
        old = min(learning_rate(model), diverged_lr)
        set_learning_rate(model, old * RECOVERY_FACTOR)
        if steps_schedule is not None:  # it sets the rate every epoch: scale it instead
            steps_schedule.scale = min(steps_schedule.scale, diverged_scale) * RECOVERY_FACTOR
        print(f"{diverged}. Recovery {guard.recoveries}/{settings.max_recoveries}: restarting from {where} "
              f"with learning rate {old:.3g} -> {old * RECOVERY_FACTOR:.3g}.", flush=True)
    seconds = time.time() - start

    summary = summarize(run_dir, history, train_source, val_source, seconds,
                        None if settings.data_service else counter)
    summary["data_dir"] = config["data"]["data_dir"]
    if is_chief:
        if after_run is not None:
            summary.update(after_run(run_dir))
        run_files.write_summary(run_dir, summary)
    return summary


def _fit_phases(model, recipe, settings, train_source, val_source, stats, preprocessing, counter,
                num_workers, worker_index, callbacks, initial_epoch):
    """`model.fit` from ``initial_epoch`` to the end, one call per data phase."""
    # Phases: the 2012 code switches PCA noise off at an epoch; a new dataset per phase.
    boundaries = [initial_epoch]
    if recipe.pca_off_epoch and initial_epoch < recipe.pca_off_epoch < recipe.epochs:
        boundaries.append(recipe.pca_off_epoch)
    boundaries.append(recipe.epochs)
    for begin, end in zip(boundaries[:-1], boundaries[1:]):
        if begin >= end:
            continue
        pca_on = not (recipe.pca_off_epoch and begin >= recipe.pca_off_epoch)
        train_ds, val_ds, steps = _datasets(recipe, train_source, val_source, stats, preprocessing, counter,
                                            num_workers, worker_index, seed_offset=begin, pca=pca_on,
                                            max_steps=settings.max_steps_per_epoch,
                                            data_service=settings.data_service)
        with warnings.catch_warnings(), datasets.naming_damaged_shard(train_source, val_source):
            # Validation streams are finite with a length Keras cannot know (unreadable
            # files are dropped): it warns when it reaches their end, which is expected.
            # Training streams are endless, so no warning of theirs is hidden.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed")
            model.fit(
                train_ds,
                validation_data=val_ds,
                steps_per_epoch=steps,
                epochs=end,
                initial_epoch=begin,
                callbacks=callbacks,
                verbose=settings.verbose,
            )


def format_summary(summary):
    """What ``train.py`` prints at the end of a run: the errors beside chance, where the
    files are, and the next commands."""
    final, best, n = summary["final"], summary["best"], summary["num_classes"]
    run_dir = summary["run_dir"]
    data_dir = summary.get("data_dir") or "DATA"
    lines = [
        f"Validation after {summary['epochs']} epochs: top-1 error {final['val_top1_error']:.2%}, "
        f"top-5 error {final['val_top5_error']:.2%} (best top-1 {best['val_top1_error']:.2%} at epoch "
        f"{best['epoch']}; chance: {1 - 1 / n:.1%} top-1 over {n} classes).",
        f"Models:  {summary['best_model']} (best), {summary['last_model']} (last)",
        f"Metrics: {Path(run_dir) / run_files.METRICS_FILE}",
    ]
    if summary.get("curves"):
        lines.append(f"Curves:  {summary['curves']}")
    lines += [
        "Next:",
        f"  python evaluate.py --top5 --ten-crop --checkpoint {run_dir} --data-dir {data_dir}   # the paper's ten-crop error",
        f"  python evaluate.py --checkpoint {run_dir} --predict IMAGE ...                 # top-5 classes of photos",
        f"  python -m keras_alexnet.visualize --run {run_dir} --images IMAGE_DIR          # figures (Fig. 3, Fig. 4)",
        f"  KERAS_ALEXNET_RUN={run_dir} jupyter lab notebooks/                            # look inside the network",
    ]
    return "\n".join(lines)


def summarize(run_dir, history, train_source, val_source, seconds, counter):
    if not history:
        raise RuntimeError(f"{run_dir}: no epoch finished.")
    best = min(history, key=lambda r: r.get(MONITOR, float("inf")))
    last = history[-1]
    trained_images = train_source.num_examples * (len(history))
    return {
        "run_dir": str(run_dir),
        "epochs": last["epoch"],
        "final": {k: last.get(k) for k in ("loss", "top1_error", "top5_error", "val_loss", "val_top1_error", "val_top5_error", "lr")},
        "best": {"epoch": best["epoch"], "val_top1_error": best.get("val_top1_error"), "val_top5_error": best.get("val_top5_error")},
        "train_images": train_source.num_examples,
        "val_images": val_source.num_examples,
        "num_classes": train_source.num_classes,
        "skipped_files_this_session": None if counter is None else counter.skipped,
        "training_seconds_this_session": seconds,
        "total_epoch_seconds": sum(r.get("seconds", 0.0) for r in history),
        "images_seen": trained_images,
        "best_model": str(run_dir / run_files.BEST_MODEL),
        "last_model": str(run_dir / run_files.LAST_MODEL),
    }
