"""The paper's training recipe (§5) on `model.fit`, with runs that survive a kill.

A run that diverges (a non-finite loss) stops at once with `TrainingDiverged`, before
anything of the diverged epoch is saved: the resume pointer, ``best.keras`` and
``last.keras`` keep naming the last finite epoch.

`train(...)` is what ``python train.py`` runs. What it writes into the run directory,
and how each file is written so that a kill at any moment loses nothing, is
`keras_alexnet.runs`' business; this module builds, compiles and fits the model, and
hands `keras_alexnet.runs` the config, statistics, training state and summary.
"""

import dataclasses
import json
import math
import os
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_alexnet import data as data_lib
from keras_alexnet import keras_compat
from keras_alexnet import run_files, training_state
from keras_alexnet import stats as stats_lib
from keras_alexnet.metrics import TopKError, error_metrics  # noqa: F401 (re-exported)
from keras_alexnet.model import AlexNet

MONITOR = run_files.MONITOR


# Optimiser -----------------------------------------------------------------------------


def paper_regularizer(weight_decay):
    """The L2 regulariser whose gradient is the paper's ``weight_decay * w``.

    Keras' ``L2(l)`` adds ``l * sum(w**2)`` to the loss, whose gradient is ``2 l w``, so
    the paper's decay of 0.0005 (§5) is ``L2(0.00025)``.
    """
    return keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None


def paper_optimizer(recipe):
    """SGD with momentum (§5). With `paper_regularizer` on the kernels, one step is
    ``v <- momentum v - weight_decay lr w - lr dL/dw``, ``w <- w + v``."""
    return keras.optimizers.SGD(learning_rate=recipe.learning_rate, momentum=recipe.momentum)


def _lr(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def _set_lr(model, value):
    model.optimizer.learning_rate.assign(value)


# Learning-rate schedules ---------------------------------------------------------------


class PlateauSchedule(keras.callbacks.Callback):
    """Divides the learning rate by 10 when the validation error stops improving (§5).

    After ``patience`` epochs in a row without a new best ``monitor`` (lower is better)
    the rate is multiplied by ``factor``, at most ``max_reductions`` times ("reduced
    three times prior to termination"). Its state (`get_state` / `set_state`) is saved
    with every checkpoint, so a resumed run continues the same count.

    Args:
        monitor: the logged quantity to watch (default ``val_top1_error``).
        factor: multiplier of the rate (0.1).
        patience: epochs without improvement before a reduction.
        max_reductions: at most this many reductions (3).
        min_delta: an improvement must be larger than this.
        verbose: print each reduction.
    """

    def __init__(self, monitor=MONITOR, factor=0.1, patience=5, max_reductions=3, min_delta=0.0, verbose=1):
        super().__init__()
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}.")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}.")
        self.monitor = monitor
        self.factor = factor
        self.patience = patience
        self.max_reductions = max_reductions
        self.min_delta = min_delta
        self.verbose = verbose
        self.best = float("inf")
        self.wait = 0
        self.reductions = 0

    def get_state(self):
        return {"best": self.best, "wait": self.wait, "reductions": self.reductions}

    def set_state(self, state):
        self.best, self.wait, self.reductions = float(state["best"]), int(state["wait"]), int(state["reductions"])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        current = logs.get(self.monitor)
        if current is None:
            raise KeyError(f"PlateauSchedule watches {self.monitor!r}, which was not logged; have {sorted(logs)}.")
        if current < self.best - self.min_delta:
            self.best, self.wait = float(current), 0
            return
        self.wait += 1
        if self.wait >= self.patience and self.reductions < self.max_reductions:
            old = _lr(self.model)
            _set_lr(self.model, old * self.factor)
            self.reductions += 1
            self.wait = 0
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} has not improved for {self.patience} epochs: "
                      f"learning rate {old:.3g} -> {old * self.factor:.3g} (reduction {self.reductions}/{self.max_reductions}).")


class StepSchedule(keras.callbacks.Callback):
    """Multiplies the base rate by ``factor`` at each of ``steps`` (0-based epochs).

    The rate of epoch ``e`` is ``scale * base * factor ** len([s for s in steps if s <= e])``,
    a pure function of the epoch; ``scale`` (1, or 0.1 per recovery from a divergence) is
    its only state.
    """

    def __init__(self, base, steps, factor=0.1):
        super().__init__()
        self.base, self.steps, self.factor = base, tuple(steps), factor
        self.scale = 1.0  # divided by 10 by each recovery from a divergence (saved)

    def get_state(self):
        return {"scale": self.scale}

    def set_state(self, state):
        self.scale = float(state["scale"])

    def rate(self, epoch):
        return self.scale * self.base * self.factor ** sum(1 for s in self.steps if s <= epoch)

    def on_epoch_begin(self, epoch, logs=None):
        _set_lr(self.model, self.rate(epoch))


class EpochInfo(keras.callbacks.Callback):
    """Adds the epoch's learning rate and wall time to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._lr, self._start = _lr(self.model), time.time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = self._lr
            logs["seconds"] = time.time() - self._start


# Divergence ----------------------------------------------------------------------------


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) became NaN or infinite; nothing of the epoch was saved.

    Attributes:
        epoch: the 1-based epoch.
        step: the 1-based step in the epoch, or None when found at the end of the epoch.
        steps: steps per epoch (or None).
        learning_rate: the rate when it diverged.
        what: what was not finite, in words (``"loss nan"``).
        run_dir: the run directory (set by `train`).
        last_good_epoch: the epoch the resume pointer names, or None when no epoch was
            saved (set by `train`).
        recoveries: recoveries made before this divergence (``--on-divergence recover``).
    """

    def __init__(self, epoch, step, steps, learning_rate, what):
        self.epoch, self.step, self.steps = epoch, step, steps
        self.learning_rate, self.what = learning_rate, what
        self.run_dir = None
        self.last_good_epoch = None
        self.recoveries = 0
        if step is not None:
            where = f"at step {step}" + (f" of {steps}" if steps else "") + f" of epoch {epoch}"
        else:  # found by the end-of-epoch check: the last step made the weights non-finite
            where = f"at the end of epoch {epoch}" + (f" (after step {steps} of {steps})" if steps else "")
        super().__init__(f"training diverged: {what} {where} (learning rate {learning_rate:.3g})")


RECOVERY_FACTOR = 0.1  # --on-divergence recover: the rate after a divergence, times this


def _non_finite(value):
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training with `TrainingDiverged` at the first step whose loss is not finite.

    Why every step and not at the end of the epoch: an ImageNet epoch is hours, and a
    NaN is final (the logged loss is the running mean of the epoch, so it stays NaN);
    stopping within the step saves the rest of the epoch and its validation. Raising
    (rather than ``stop_training``) also keeps Keras from running the validation and
    the ``on_epoch_end`` of the other callbacks, so nothing of a diverged epoch is
    saved. `SaveTrainingState` checks the loss and the weights once more before it writes
    (a last step that made the weights NaN logs a finite loss).

    ``async_safe``: Keras may run this in a worker thread, so the check costs the
    training loop nothing; the error then surfaces at the next step (the step number
    reported is the one that diverged).
    """

    async_safe = True

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.recoveries = 0  # recoveries so far (``--on-divergence recover``), saved with the run

    def get_state(self):
        return {"recoveries": self.recoveries}

    def set_state(self, state):
        self.recoveries = int(state["recoveries"])

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and _non_finite(loss):
            raise TrainingDiverged(self.epoch, batch + 1, (self.params or {}).get("steps"),
                                   _lr(self.model), f"loss {float(loss)}")


def check_finite(model, logs, epoch, steps=None):
    """Raises `TrainingDiverged` (at the end of ``epoch``, 1-based, of ``steps`` steps)
    when a loss in ``logs`` or a weight of ``model`` is NaN or infinite."""
    logs = logs or {}
    for key in ("loss", "val_loss"):
        if key in logs and _non_finite(logs[key]):
            raise TrainingDiverged(epoch, None, steps, _lr(model), f"{key} {float(logs[key])}")
    for variable in model.weights:
        if not np.isfinite(keras.ops.convert_to_numpy(variable)).all():
            raise TrainingDiverged(epoch, None, steps, _lr(model), f"weights of {variable.path} not finite")


# The training state, each epoch ---------------------------------------------------


class SaveTrainingState(keras.callbacks.Callback):
    """Writes the training state of a run at the end of every epoch, kill-safe
    (`keras_alexnet.training_state.save_training_state`: model and state, ``best.keras``,
    ``last.keras``, ``metrics.csv``, then the pointer).

    Args:
        run_dir: the run directory.
        stateful: dict of name -> callback with ``get_state`` / ``set_state``.
        history: list of per-epoch log dicts, continued on resume.
        monitor: the quantity that decides ``best.keras`` (lower is better).
        is_chief: the chief worker of multi-worker training writes to ``run_dir``; the
            others write the same files to ``run_dir/workers/<index>`` (so that every
            worker takes part in the same save, and tests can compare the replicas).
        worker_index: this worker's index.
    """

    def __init__(self, run_dir, stateful=None, history=None, monitor=MONITOR, is_chief=True, worker_index=0):
        super().__init__()
        self.run_dir = Path(run_dir) if is_chief else Path(run_dir) / "workers" / str(worker_index)
        self.stateful = stateful or {}
        self.history = history if history is not None else []
        self.monitor = monitor
        self.is_chief = is_chief
        best = [r[monitor] for r in self.history if r.get(monitor) is not None]
        self.best = min(best) if best else float("inf")

    def on_epoch_end(self, epoch, logs=None):
        check_finite(self.model, logs, epoch + 1, (self.params or {}).get("steps"))  # never saved
        row = {"epoch": epoch + 1}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self.history.append(row)
        callbacks = {name: cb.get_state() for name, cb in self.stateful.items()}
        self.best = training_state.save_training_state(self.run_dir, self.model, self.history, callbacks,
                                             self.best, self.monitor)


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


# Precision -----------------------------------------------------------------------------


def choose_precision(cpu_flags=None, gpu_capabilities=None):
    """The fastest mixed-precision policy for the hardware, without changing the network.

    bfloat16 pays only where the hardware computes it: on CPUs with AMX-BF16 or
    AVX512_BF16, and on GPUs of compute capability 8.0 or later; GPUs from 7.0 get
    float16 (with loss scaling). Elsewhere bf16 is emulated: on this project's AVX-512
    machines without those flags bf16 trained 3.5x *slower* than float32 (bench/NOTES.md).

    Args:
        cpu_flags: set of /proc/cpuinfo flags (read from the machine if None).
        gpu_capabilities: list of (major, minor) of the visible GPUs (queried if None).

    Returns:
        ``"mixed_bfloat16"``, ``"mixed_float16"`` or ``"float32"``.
    """
    if gpu_capabilities is None:
        gpu_capabilities = []
        for gpu in tf.config.list_physical_devices("GPU"):
            cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
            if cc:
                gpu_capabilities.append(tuple(cc))
    if gpu_capabilities:
        lowest = min(gpu_capabilities)
        return "mixed_bfloat16" if lowest >= (8, 0) else "mixed_float16" if lowest >= (7, 0) else "float32"
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    return "mixed_bfloat16" if BF16_CPU_FLAGS & set(cpu_flags) else "float32"


BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}


def _cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def choose_xla(precision, grouping="towers", cpu_flags=None, num_gpus=None):
    """Whether XLA makes the training step faster, without changing what it computes.

    Measured on CPU (bench/NOTES.md): in float32 XLA is slower than TensorFlow's oneDNN
    kernels (32 vs 37 img/s); in bfloat16 on a CPU *without* bf16 instructions it is more
    than twice as fast (27 vs 12 img/s), because XLA's bf16 convolutions beat oneDNN's
    bf16 emulation. With the grouped layout XLA is always slow (its grouped-conv filter
    gradient, 6-7 img/s). On GPUs and on CPUs with AMX/AVX512_BF16 nothing was measured
    here, so XLA stays off.

    Args:
        precision: the resolved policy name (``"float32"``, ``"mixed_bfloat16"``, ...).
        grouping: the model layout.
        cpu_flags: set of /proc/cpuinfo flags (read from the machine if None).
        num_gpus: number of visible GPUs (queried if None).
    """
    if precision != "mixed_bfloat16" or grouping == "grouped":
        return False
    if num_gpus is None:
        num_gpus = len(tf.config.list_physical_devices("GPU"))
    if num_gpus:
        return False
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    return not (BF16_CPU_FLAGS & set(cpu_flags))


# Distribution --------------------------------------------------------------------------


def make_strategy(kind="auto"):
    """The `tf.distribute` strategy for ``kind``.

    ``"auto"``: `MultiWorkerMirroredStrategy` when ``TF_CONFIG`` names a cluster of more
    than one worker, `MirroredStrategy` with several GPUs, else the default strategy.
    ``"mirrored"``, ``"multi-worker"``, ``"default"`` force one.
    """
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    workers = tf_config.get("cluster", {}).get("worker", [])
    if kind == "auto":
        if len(workers) > 1:
            kind = "multi-worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {kind!r}")


def worker_info(strategy):
    """``(num_workers, worker_index, is_chief)`` of this process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 1, 0, True
    num = resolver.cluster_spec().num_tasks("worker")
    index = resolver.task_id or 0
    return num, index, index == 0


# The run -------------------------------------------------------------------------------


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


def _datasets(recipe, train_source, val_source, stats, counter, num_workers, worker_index,
              seed_offset=0, pca=True, max_steps=None):
    train_ds = data_lib.training_dataset(
        train_source,
        recipe.batch_size // num_workers,
        stats=stats,
        mean=recipe.mean,
        crop_size=recipe.crop_size,
        resize_size=recipe.resize_size,
        pca_stddev=recipe.pca_stddev if pca else 0.0,
        seed=recipe.seed + seed_offset,
        num_shards=num_workers,
        shard_index=worker_index,
        counter=counter,
    )
    val_ds = data_lib.evaluation_dataset(
        val_source,
        recipe.batch_size // num_workers,
        stats=stats,
        mean=recipe.mean,
        crop_size=recipe.crop_size,
        resize_size=recipe.resize_size,
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


def build_model(recipe, num_classes, grouping="towers", devices=None, classifier_activation="softmax"):
    """`AlexNet` with the recipe's architecture, initialisation and weight decay."""
    return AlexNet(
        classes=num_classes,
        grouping=grouping,
        devices=devices,
        kernel_regularizer=paper_regularizer(recipe.weight_decay),
        classifier_activation=classifier_activation,
        **recipe.model_kwargs(),
    )


def compile_model(model, recipe, settings):
    model.compile(
        optimizer=paper_optimizer(recipe),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=error_metrics(),
        jit_compile=settings.xla,
        steps_per_execution=settings.steps_per_execution,
    )
    return model


def train(recipe, train_source, val_source, settings, stats_path=None, data_description=None, strategy=None):
    """Trains (or resumes) a run and returns its summary dict.

    Args:
        recipe: a `keras_alexnet.recipes.Recipe`.
        train_source, val_source: `keras_alexnet.sources.Source` s.
        settings: `RunSettings`.
        stats_path: an ``.npz`` from ``python -m keras_alexnet.stats``; None computes
            (and saves) the statistics of the training source.
        data_description: JSON-ready description of the data, saved in the config.
        strategy: a `tf.distribute.Strategy`; default `make_strategy(settings.strategy)`.
            `MultiWorkerMirroredStrategy` must be created before TensorFlow runs any op
            (before the sources are listed), so scripts create it first.

    Returns:
        The dict also written to ``summary.json``.

    Raises:
        keras_alexnet.run_files.RunLockedError: another process is training in the directory.
        keras_alexnet.run_files.RunWriteError: a file could not be written (a full disk).
        keras_alexnet.run_files.RunError: a damaged run directory without a checkpoint to use.
        TrainingDiverged: the loss became non-finite (nothing of that epoch is saved).
    """
    run_dir = Path(settings.output_dir)
    if settings.precision == "auto":
        settings = dataclasses.replace(settings, precision=choose_precision())
        print(f"Precision: {settings.precision} (chosen for this hardware; --precision to override).", flush=True)
    if settings.xla == "auto":
        settings = dataclasses.replace(settings, xla=choose_xla(settings.precision, settings.grouping))
        if settings.xla:
            print("XLA: on (bf16 on a CPU without bf16 instructions runs >2x faster with XLA; "
                  "--xla off to disable).", flush=True)
    keras.mixed_precision.set_global_policy(settings.precision)
    if strategy is None:
        strategy = make_strategy(settings.strategy)
    num_workers, worker_index, is_chief = worker_info(strategy)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        keras_compat.patch_multi_worker_reduce()
    if recipe.batch_size % num_workers:
        raise ValueError(f"batch size {recipe.batch_size} is not divisible by {num_workers} workers.")
    # One writer per directory (`keras_alexnet.run_files.RunLock`), taken before anything is
    # written: the chief locks the run, worker i its own RUN/workers/<i>.
    own_dir = run_dir if is_chief else run_dir / run_files.WORKERS_DIR / str(worker_index)
    with run_files.lock_run(own_dir):
        return _train_locked(recipe, train_source, val_source, settings, stats_path, data_description,
                             strategy, run_dir, num_workers, worker_index, is_chief)


def _train_locked(recipe, train_source, val_source, settings, stats_path, data_description,
                  strategy, run_dir, num_workers, worker_index, is_chief):
    config = {
        "recipe": recipe.to_dict(),
        "data": data_description or {"train": train_source.location, "val": val_source.location},
        "settings": dataclasses.asdict(settings),
        "num_classes": train_source.num_classes,
        "class_names": list(train_source.class_names),
        "class_index": train_source.class_index,
        "versions": run_files.versions(),
        # Relative paths in "data" are relative to this (notebooks resolve them with it).
        "working_dir": os.getcwd(),
    }
    run_files.check_config(run_dir, config)
    if is_chief:
        run_files.write_config(run_dir, config)

    stats = _prepare_stats(train_source, recipe, run_dir, stats_path, settings.stats_max_images, is_chief)

    with strategy.scope():
        model = build_model(recipe, train_source.num_classes, settings.grouping, settings.devices)
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
        print(f"Resuming {run_dir} after epoch {initial_epoch} (learning rate {_lr(model):.3g}).", flush=True)

    counter = data_lib.SkipCounter()
    callbacks.append(data_lib.SkipReport(counter, len(train_source.non_image_files)))
    checkpoint = SaveTrainingState(run_dir, stateful, history, MONITOR, is_chief, worker_index)
    # The checkpoint goes after every callback that adds to the logs or changes state.
    callbacks += [checkpoint]
    if is_chief:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / run_files.TENSORBOARD_DIR), write_graph=False))

    start = time.time()
    while True:
        try:
            _fit_phases(model, recipe, settings, train_source, val_source, stats, counter, num_workers,
                        worker_index, callbacks, initial_epoch)
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
        diverged_lr = _lr(model)
        diverged_scale = steps_schedule.scale if steps_schedule is not None else 1.0
        state = training_state.read_training_state(run_dir)
        if state is not None:
            initial_epoch, where = restore(state), f"epoch {state.epoch} ({state.model_path})"
        else:  # nothing saved yet: the initial weights, a fresh optimizer and schedule
            weights, plateau_state = initial
            model.set_weights(weights)
            for variable in model.optimizer.variables:
                variable.assign(keras.ops.zeros_like(variable))
            _set_lr(model, recipe.learning_rate)
            if plateau is not None:
                plateau.set_state(plateau_state)
            history.clear()
            initial_epoch, where = 0, "the initial weights"
        checkpoint.best = min([r[MONITOR] for r in history if r.get(MONITOR) is not None] or [float("inf")])
        old = min(_lr(model), diverged_lr)
        _set_lr(model, old * RECOVERY_FACTOR)
        if steps_schedule is not None:  # it sets the rate every epoch: scale it instead
            steps_schedule.scale = min(steps_schedule.scale, diverged_scale) * RECOVERY_FACTOR
        print(f"{diverged}. Recovery {guard.recoveries}/{settings.max_recoveries}: restarting from {where} "
              f"with learning rate {old:.3g} -> {old * RECOVERY_FACTOR:.3g}.", flush=True)
    seconds = time.time() - start

    summary = summarize(run_dir, history, train_source, val_source, seconds, counter)
    summary["data_dir"] = (config["data"] or {}).get("data_dir")
    if is_chief:
        summary["curves"] = write_curves(run_dir, history)
        run_files.write_summary(run_dir, summary)
    return summary


def _fit_phases(model, recipe, settings, train_source, val_source, stats, counter, num_workers,
                worker_index, callbacks, initial_epoch):
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
        train_ds, val_ds, steps = _datasets(recipe, train_source, val_source, stats, counter,
                                            num_workers, worker_index, seed_offset=begin, pca=pca_on,
                                            max_steps=settings.max_steps_per_epoch)
        with warnings.catch_warnings():
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


def write_curves(run_dir, history):
    """Draws the run's training curves into ``figures/training_curves.png``; its path,
    or None when they cannot be drawn (said, never fatal: the models are saved)."""
    from keras_alexnet import visualize

    path = Path(run_dir) / run_files.FIGURES_DIR / "training_curves.png"
    try:
        visualize.plot_training_curves(run_files.read_metrics(run_dir), path, title=f"Training curves: {run_dir}")
    except (OSError, ValueError) as e:
        print(f"Could not draw the training curves into {path}: {e}")
        return None
    return str(path)


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
        "skipped_files_this_session": counter.skipped,
        "training_seconds_this_session": seconds,
        "total_epoch_seconds": sum(r.get("seconds", 0.0) for r in history),
        "images_seen": trained_images,
        "best_model": str(run_dir / run_files.BEST_MODEL),
        "last_model": str(run_dir / run_files.LAST_MODEL),
    }
