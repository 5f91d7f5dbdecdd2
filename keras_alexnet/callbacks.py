"""The Keras callbacks of a training run: the paper's learning-rate schedules
(docs/paper.md §5), the per-epoch log additions, the divergence check, and the
per-epoch save of the training state.

A run that diverges (a non-finite loss) stops at once with `TrainingDiverged`, before
anything of the diverged epoch is saved: the resume pointer, ``best.keras`` and
``last.keras`` keep naming the last finite epoch.
"""

import math
import os
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np

from keras_alexnet import run_files, training_state

MONITOR = run_files.MONITOR


def learning_rate(model):
    """The current learning rate of ``model``'s optimizer, as a float."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def set_learning_rate(model, value):
    model.optimizer.learning_rate.assign(value)


# Learning-rate schedules ---------------------------------------------------------------


class PlateauSchedule(keras.callbacks.Callback):
    """Divides the learning rate by 10 when the validation error stops improving (docs/paper.md §5).

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
            old = learning_rate(self.model)
            set_learning_rate(self.model, old * self.factor)
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
        set_learning_rate(self.model, self.rate(epoch))


class EpochInfo(keras.callbacks.Callback):
    """Adds the epoch's learning rate and wall time to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._lr, self._start = learning_rate(self.model), time.time()

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
                                   learning_rate(self.model), f"loss {float(loss)}")


def check_finite(model, logs, epoch, steps=None):
    """Raises `TrainingDiverged` (at the end of ``epoch``, 1-based, of ``steps`` steps)
    when a loss in ``logs`` or a weight of ``model`` is NaN or infinite."""
    logs = logs or {}
    for key in ("loss", "val_loss"):
        if key in logs and _non_finite(logs[key]):
            raise TrainingDiverged(epoch, None, steps, learning_rate(model), f"{key} {float(logs[key])}")
    for variable in model.weights:
        if not np.isfinite(keras.ops.convert_to_numpy(variable)).all():
            raise TrainingDiverged(epoch, None, steps, learning_rate(model), f"weights of {variable.path} not finite")


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


# ---------------------------------------------------------------------------------------
# A training input that stops coming.

EXIT_INPUT_STALLED = 5  # train.py's exit status when InputWatchdog fires


class InputWatchdog(keras.callbacks.Callback):
    """Ends the process when no training batch arrives for ``timeout_s`` seconds.

    A tf.data service pass whose worker died waits for it forever (TensorFlow 2.21,
    `keras_alexnet.data_service`); the wait is inside TensorFlow, where no Python
    exception reaches. A thread watches the time since the last training batch (validation
    and the epoch's save do not count) and, past ``timeout_s``, prints ``message`` and
    calls ``on_stall`` (default: ``os._exit(EXIT_INPUT_STALLED)``). Every saved epoch is
    whole (the checkpoints are written atomically), so the same command resumes.
    """

    def __init__(self, timeout_s, message, on_stall=None, poll_s=1.0):
        super().__init__()
        self.timeout_s, self.message, self.poll_s = float(timeout_s), message, poll_s
        self.on_stall = on_stall or (lambda: os._exit(EXIT_INPUT_STALLED))
        self._last, self._paused, self._stop = time.monotonic(), True, threading.Event()
        self._thread = None

    def _watch(self):
        while not self._stop.wait(self.poll_s):
            if not self._paused and time.monotonic() - self._last > self.timeout_s:
                print(self.message.format(seconds=round(time.monotonic() - self._last)), file=sys.stderr,
                      flush=True)
                self._paused = True  # once
                self.on_stall()

    def on_train_begin(self, logs=None):
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="input-watchdog", daemon=True)
        self._thread.start()

    def on_epoch_begin(self, epoch, logs=None):
        self._last, self._paused = time.monotonic(), False

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.monotonic()

    def on_test_begin(self, logs=None):  # validation (this process's own pipeline)
        self._paused = True

    def on_epoch_end(self, epoch, logs=None):
        self._paused = True

    def on_train_end(self, logs=None):
        self._stop.set()
