"""A run directory, and a model directory: the one module that reads and writes them.

Three words, three things:

- a **run** is a directory written by ``python train.py`` (or a *model directory*
  written by ``python -m keras_alexnet.convert``); `open_run` opens either, or a
  ``.keras`` file inside one, as a `Run`: the model file, the recipe, the class names
  and the `Preprocessing` the model must be fed with, **resolved once**;
- its **training state** is what resumes it: ``checkpoint.json`` pointing at
  ``checkpoints/epoch-NNNN.keras`` (model and optimizer) and ``epoch-NNNN.json``
  (history and callback state), `TrainingState`;
- a loaded **model** is ``Run.model`` (loaded safely, on first use).

Files of a run directory (the names below are the only place they are spelled):

- ``config.json``: the resolved recipe, data and run settings, the class names
  (`write_config`, `check_config` raises `ConfigMismatchError` on a resume with other
  flags);
- ``stats.npz``: the dataset statistics (mean image, RGB PCA) the run used;
- ``metrics.csv``: one row per finished epoch (`format_metrics`, `read_metrics`);
- ``tensorboard/``: TensorBoard logs;
- ``checkpoints/`` and ``checkpoint.json``: the training state (`save_training_state`,
  `read_training_state`);
- ``best.keras`` (lowest validation top-1 error) and ``last.keras``;
- ``summary.json``: the final figures (`write_summary`, `read_summary`);
- ``figures/``: PNGs of ``python -m keras_alexnet.visualize`` and the notebooks.

A model directory (a converted published network) holds ``model.keras``,
``config.json`` with ``"kind": "converted"``, the 1000 ImageNet class names and a
``preprocessing`` block (crop and resize size, mean mode, ``mean_rgb`` / ``std_rgb`` in
RGB pixel units, ``channel_order``, provenance), and ``mean_image.npy`` when it
subtracts a mean image.

Every write is atomic (a temporary file, fsync, rename): a reader, or a run killed at
any moment, sees the old file or the new one, whole. A write that fails (a full disk,
a read-only directory, a quota) raises `RunWriteError` naming the path, and leaves no
temporary file behind.

One writer per run directory: ``train.py`` holds `RunLock` (``RUN/.lock``) for the
whole run; readers (evaluate.py, the figures, the notebooks) take no lock and may read
a run that is being trained.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import fcntl
import functools
import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np

from keras_alexnet import data as data_lib
from keras_alexnet import imagenet
from keras_alexnet import recipes
from keras_alexnet import stats as stats_lib

CONFIG_FILE = "config.json"
STATS_FILE = "stats.npz"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
POINTER_FILE = "checkpoint.json"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
FIGURES_DIR = "figures"
BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"
CONVERTED_MODEL = "model.keras"
MEAN_IMAGE_FILE = "mean_image.npy"
LOCK_FILE = ".lock"  # held by the one process writing the run (`RunLock`)
WORKERS_DIR = "workers"  # RUN/workers/<i>: what non-chief workers write
# A directory's models, in the order `find_model` tries them.
MODEL_FILES = (BEST_MODEL, LAST_MODEL, CONVERTED_MODEL)
MONITOR = "val_top1_error"  # what decides best.keras (lower is better)
METRIC_COLUMNS = ("epoch", "loss", "top1_error", "top5_error", "val_loss", "val_top1_error",
                  "val_top5_error", "lr", "skipped_files", "seconds")
MEAN_MODES = ("image", "channel", "none")


class RunError(ValueError):
    """A run or model directory that cannot be used as given (the message names the
    problem and the path)."""


class RunNotFoundError(RunError, FileNotFoundError):
    """A run directory, model file or statistics file that does not exist."""


class UnsafeModelError(RunError):
    """A model file that would execute arbitrary code when loaded."""


class ConfigMismatchError(RunError):
    """Resuming a run directory with another configuration than it was started with."""


class RunLockedError(RunError):
    """Another live process is writing the run directory (it holds `RunLock`)."""


class DamagedStateError(RunError):
    """The training state of a run cannot be used, and no complete checkpoint is left
    to fall back on (the message names the damaged files and what to do)."""


class RunWriteError(RunError, OSError):
    """A file of a run could not be written: a full disk, a read-only directory, a quota.

    Attributes:
        path: the file (or directory) that could not be written.
        errno: the `errno` of the underlying `OSError`.
    """

    def __init__(self, path, error):
        self.path = Path(path)
        code = getattr(error, "errno", None)
        hint = {
            errno.ENOSPC: "the disk is full: free some space",
            errno.EDQUOT: "the disk quota is exceeded: free some space",
            errno.EROFS: "the file system is read-only: pass a writable --output-dir",
            errno.EACCES: "permission denied: make the directory writable or pass another --output-dir",
            errno.EPERM: "permission denied: make the directory writable or pass another --output-dir",
        }.get(code, "check the disk")
        reason = getattr(error, "strerror", None) or str(error)
        super().__init__(f"Cannot write {self.path}: {reason} ({hint}, then run the same "
                         "command again to resume).")
        self.errno = code


# ---------------------------------------------------------------------------------------
# Atomic writers


def fsync_dir(path):
    """fsync a directory (a rename inside it is then durable); a no-op where impossible."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse to fsync a directory; the rename itself is done
    finally:
        os.close(fd)


class _write_errors:
    """Turns an `OSError` raised while writing ``path`` into a `RunWriteError`."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, OSError) and not isinstance(error, RunWriteError):
            raise RunWriteError(self.path, error) from error
        return False


def _atomic(path, write, tmp_name):
    """``write(tmp)``, fsync, rename onto ``path``; the temporary file never stays behind.

    Raises:
        RunWriteError: the file could not be written (names it; the temporary file is gone).
    """
    path = Path(path)
    tmp = path.with_name(tmp_name)
    with _write_errors(path):
        try:
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)


def atomic_write_text(path, text):
    """Writes ``text`` to ``path`` so that a reader sees the old or the new file, whole."""
    _atomic(path, lambda tmp: Path(tmp).write_text(text), f".{Path(path).name}.tmp")


def atomic_save_model(model, path):
    """`model.save(path)` through a temporary file and an atomic rename."""
    # The temporary name keeps the .keras suffix Keras wants.
    _atomic(path, model.save, f".tmp-{Path(path).name}")


def atomic_save_npy(array, path):
    """`numpy.save` (no pickles) through a temporary file and an atomic rename."""
    _atomic(path, lambda tmp: np.save(tmp, np.asarray(array), allow_pickle=False), f".tmp-{Path(path).name}")


def atomic_link_or_copy(src, dst):
    """``dst`` becomes a hard link to ``src`` (a copy where links are impossible), atomically."""
    dst = Path(dst)
    tmp = dst.with_name(f".tmp-{dst.name}")
    with _write_errors(dst):
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(dst.parent)


def _read_json(path):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise RunNotFoundError(f"{path} does not exist.") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"Cannot read {path} ({type(e).__name__}: {e}); is it damaged?") from e


def versions():
    """The versions a run or an evaluation records."""
    import keras
    import tensorflow as tf

    import keras_alexnet

    return {"tensorflow": tf.__version__, "keras": keras.__version__,
            "keras_alexnet": keras_alexnet.__version__}


# ---------------------------------------------------------------------------------------
# config.json


def write_config(run_dir, config):
    """Writes ``config.json`` (JSON-ready: tuples become lists)."""
    atomic_write_text(Path(run_dir) / CONFIG_FILE, json.dumps(config, indent=2, default=str))


def read_config(run_dir):
    """A run's ``config.json`` as a dict.

    Raises:
        RunNotFoundError: there is none; RunError: it cannot be parsed.
    """
    return _read_json(Path(run_dir) / CONFIG_FILE)


COMPARED_CONFIG_KEYS = ("recipe", "data")  # what a resume must not change


def check_config(run_dir, config):
    """Raises `ConfigMismatchError` when ``run_dir`` holds a run of another recipe or data.

    Nothing is checked when the directory has no ``config.json`` yet (a new run).
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return
    saved = _read_json(path)
    config = json.loads(json.dumps(config, default=str))  # tuples -> lists, as saved
    diffs = []
    for key in COMPARED_CONFIG_KEYS:
        a, b = saved.get(key) or {}, config.get(key) or {}
        diffs += [f"{key}.{f}: {a.get(f)!r} -> {b.get(f)!r}"
                  for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
    if diffs:
        raise ConfigMismatchError(
            f"{run_dir} holds a run with another configuration ({'; '.join(diffs)}). "
            "Use the same flags to resume it, or another --output-dir for a new run.")


# ---------------------------------------------------------------------------------------
# metrics.csv and summary.json


def format_metrics(history):
    """The per-epoch history as CSV text (known columns first, then any others)."""
    extra = sorted({k for row in history for k in row} - set(METRIC_COLUMNS))
    columns = [c for c in METRIC_COLUMNS if any(c in row for row in history)] + extra
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in columns})
    return out.getvalue()


def write_metrics(run_dir, history):
    atomic_write_text(Path(run_dir) / METRICS_FILE, format_metrics(history))


def read_metrics(path):
    """Reads a metrics CSV (a header row, then one row per epoch): a run's
    ``metrics.csv``, or a run directory holding one.

    Returns:
        dict column name -> float64 array; empty or non-numeric cells are NaN.

    Raises:
        RunNotFoundError: no such file; RunError: an empty file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise RunNotFoundError(f"No metrics file: {path}")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise RunError(f"Empty metrics file: {path}")
        header = [h.strip() for h in header]
        rows = [row for row in reader if any(cell.strip() for cell in row)]

    def number(cell):
        try:
            return float(cell)
        except ValueError:
            return np.nan

    return {
        name: np.array([number(row[i]) if i < len(row) else np.nan for row in rows])
        for i, name in enumerate(header)
    }


def write_summary(run_dir, summary):
    atomic_write_text(Path(run_dir) / SUMMARY_FILE, json.dumps(summary, indent=2))


def read_summary(run_dir):
    """``summary.json`` as a dict, or None when the run has not finished."""
    path = Path(run_dir) / SUMMARY_FILE
    return _read_json(path) if path.is_file() else None


# ---------------------------------------------------------------------------------------
# stats.npz


def write_stats(run_dir, stats):
    """Saves a `keras_alexnet.stats.DatasetStats` as the run's ``stats.npz``, atomically
    (other workers may be reading it)."""
    own = Path(run_dir) / STATS_FILE
    tmp = own.with_name(".tmp-stats.npz")
    with _write_errors(own):
        try:
            stats.save(tmp)
            os.replace(tmp, own)
        finally:
            tmp.unlink(missing_ok=True)


def load_stats(path):
    """`keras_alexnet.stats.load_stats` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise RunNotFoundError(f"Statistics file not found: {path}.")
    try:
        return stats_lib.load_stats(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise RunError(
            f"Cannot read the statistics {path} (expected an .npz from "
            f"`python -m keras_alexnet.stats`): {e}"
        ) from e


# ---------------------------------------------------------------------------------------
# The training state


@dataclasses.dataclass
class TrainingState:
    """What resumes a run: the model and optimizer file, and the state written with it.

    Attributes:
        model_path: ``checkpoints/epoch-NNNN.keras``.
        epoch: epochs finished.
        history: one dict per finished epoch (the rows of ``metrics.csv``).
        callbacks: the state of stateful callbacks by name (``"plateau"``).
    """

    model_path: Path
    epoch: int
    history: list
    callbacks: dict


def save_training_state(run_dir, model, history, callbacks=None, best=float("inf"), monitor=MONITOR):
    """Writes the training state after an epoch, kill-safe, and returns the new best.

    Order of writes, each atomic:

    1. ``checkpoints/epoch-NNNN.keras``: model, optimizer state (momentum, iteration
       count, learning rate);
    2. ``checkpoints/epoch-NNNN.json``: epoch count, history, callback state;
    3. ``best.keras`` on a new best and ``last.keras`` (hard links), ``metrics.csv``;
    4. ``checkpoint.json``: the pointer to the pair above;
       then older checkpoint pairs are deleted.

    A kill at any moment leaves ``checkpoint.json`` pointing at a complete pair: the
    newest one if step 4 finished, else the previous one (never deleted before step 4).
    A kill between steps 3 and 4 leaves ``best.keras`` / ``last.keras`` one epoch ahead
    of the pointer: a complete model either way; the resumed run redoes that epoch.

    Args:
        run_dir: where to write.
        model: the compiled model.
        history: the rows so far, the newest (with its ``epoch``) last.
        callbacks: name -> JSON-ready state of stateful callbacks.
        best: the lowest ``monitor`` before this epoch.
        monitor: what decides ``best.keras``.

    Returns:
        The lowest ``monitor`` including this epoch.
    """
    run_dir = Path(run_dir)
    row = history[-1]
    epoch = int(row["epoch"])
    ckpt_dir = run_dir / CHECKPOINTS_DIR
    with _write_errors(ckpt_dir):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    stem = f"epoch-{epoch:04d}"
    try:
        atomic_save_model(model, ckpt_dir / f"{stem}.keras")
        state = {"epoch": epoch, "history": history, "callbacks": callbacks or {}}
        atomic_write_text(ckpt_dir / f"{stem}.json", json.dumps(state, indent=1))
        # best.keras and last.keras before the pointer: once the pointer names an epoch,
        # they include it (a kill right after the pointer must not lose the best model).
        current = row.get(monitor)
        if current is not None and current < best:
            best = current
            atomic_link_or_copy(ckpt_dir / f"{stem}.keras", run_dir / BEST_MODEL)
        atomic_link_or_copy(ckpt_dir / f"{stem}.keras", run_dir / LAST_MODEL)
        write_metrics(run_dir, history)
        pointer = {"epoch": epoch, "model": f"{CHECKPOINTS_DIR}/{stem}.keras",
                   "state": f"{CHECKPOINTS_DIR}/{stem}.json"}
        atomic_write_text(run_dir / POINTER_FILE, json.dumps(pointer, indent=1))
    except RunWriteError:
        # A failed write (full disk): the pointer still names the previous pair. This
        # epoch's own files go, to give the space back and leave nothing half-done;
        # best.keras / last.keras, if already linked, are whole models either way.
        try:
            named = json.loads((run_dir / POINTER_FILE).read_text()).get("model")
        except (OSError, ValueError, AttributeError):
            named = None
        if named != f"{CHECKPOINTS_DIR}/{stem}.keras":  # never the pair the pointer names
            for name in (f"{stem}.keras", f"{stem}.json"):
                (ckpt_dir / name).unlink(missing_ok=True)
        raise
    for old in ckpt_dir.glob("epoch-*"):
        if not old.name.startswith(stem):
            old.unlink(missing_ok=True)
    return best


def read_training_state(run_dir):
    """The training state of ``run_dir``, or None when it has none (a new run).

    `find_training_state` without its notes (they are printed).

    Raises:
        DamagedStateError: no complete checkpoint is left (names the files).
    """
    state, notes = find_training_state(run_dir)
    for note in notes:
        print(note, flush=True)
    return state


_CKPT_PATTERN = re.compile(r"^epoch-(\d{4,})\.json$")


def _check_model_file(path):
    """Raises `RunError` unless ``path`` is a whole ``.keras`` archive (its CRCs checked:
    a torn or truncated file fails; the model itself is loaded by the resume)."""
    if not path.is_file():
        raise RunError(f"{path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise RunError(f"{path} is not a whole .keras archive ({type(e).__name__}: {e})") from e
    if bad is not None:
        raise RunError(f"{path} is damaged (bad CRC in {bad})")
    if "config.json" not in names:
        raise RunError(f"{path} is not a Keras model archive (no config.json inside)")


def _parse_state(path, model_path):
    """A `TrainingState` from ``checkpoints/epoch-NNNN.json``, every field checked."""
    state = _read_json(path)
    try:
        if not isinstance(state, dict):
            raise TypeError(f"a JSON object, got {type(state).__name__}")
        epoch, history, callbacks = state["epoch"], state["history"], state["callbacks"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise TypeError(f"'epoch' must be a positive integer, got {epoch!r}")
        if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
            raise TypeError("'history' must be a list of objects (one per epoch)")
        epochs = [r.get("epoch") for r in history]
        if epochs != list(range(1, epoch + 1)):
            raise ValueError(f"'history' holds epochs {epochs}, expected 1..{epoch}")
        if not isinstance(callbacks, dict):
            raise TypeError("'callbacks' must be an object")
        # The state of the training callbacks (keras_alexnet.training): name -> its numbers.
        for name, keys in (("plateau", ("best", "wait", "reductions")), ("steps", ("scale",)),
                           ("divergence", ("recoveries",))):
            part = callbacks.get(name)
            if part is None:
                continue
            if not isinstance(part, dict):
                raise TypeError(f"'callbacks.{name}' must be an object")
            for key in keys:
                value = part[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError(f"'callbacks.{name}.{key}' must be a number, got {value!r}")
    except KeyError as e:
        raise RunError(f"{path} lacks the key {e}") from e
    except (TypeError, ValueError) as e:
        raise RunError(f"{path}: {e}") from e
    _check_model_file(model_path)
    return TrainingState(model_path=model_path, epoch=epoch, history=history, callbacks=callbacks)


def _from_pointer(run_dir):
    pointer = run_dir / POINTER_FILE
    ptr = _read_json(pointer)
    try:
        model, state = Path(ptr["model"]), Path(ptr["state"])
        epoch = ptr["epoch"]
    except (KeyError, TypeError) as e:
        raise RunError(f"{pointer} lacks the key {e}") from e
    for part in (model, state):
        if part.is_absolute() or ".." in part.parts:
            raise RunError(f"{pointer} names {part}, outside {run_dir}")
    found = _parse_state(run_dir / state, run_dir / model)
    if found.epoch != epoch:
        raise RunError(f"{pointer} says epoch {epoch!r} but {run_dir / state} holds epoch {found.epoch}")
    return found


def find_training_state(run_dir):
    """What resumes ``run_dir``: the checkpoint ``checkpoint.json`` names, else the
    newest complete checkpoint pair, with notes for the console.

    What is trusted, in this order:

    1. ``checkpoint.json`` and the pair it names, when every part checks: the pointer
       and ``checkpoints/epoch-NNNN.json`` parse, hold the keys with the right types
       (``epoch`` a positive int matching the pointer's, ``history`` one row per epoch
       1..N, the plateau state numbers), and ``epoch-NNNN.keras`` is a whole archive;
    2. otherwise (a damaged, hand-edited or missing pointer, or one naming a missing or
       torn file) the newest ``checkpoints/epoch-NNNN.{json,keras}`` pair that checks
       the same way; a note names the damaged file and the checkpoint used;
    3. otherwise, if anything was damaged, `DamagedStateError`: nothing is resumed from
       ``best.keras`` / ``last.keras``, which lack the optimizer state (momentum, rate)
       and the schedule's state, so a "resume" from them would be another run.

    The history is never rebuilt from ``metrics.csv``: the callback state is not there.

    Returns:
        ``(state or None, notes)``: None (and no notes) for a new run (no pointer, no
        checkpoint); ``notes`` is a list of sentences.

    Raises:
        DamagedStateError: a damaged state with no complete checkpoint to fall back on.
    """
    run_dir = Path(run_dir)
    pointer = run_dir / POINTER_FILE
    ckpt_dir = run_dir / CHECKPOINTS_DIR
    pairs = sorted(((int(m.group(1)), ckpt_dir / m.group(0)) for m in
                    (_CKPT_PATTERN.match(p.name) for p in (ckpt_dir.iterdir() if ckpt_dir.is_dir() else []))
                    if m), reverse=True)
    problems = []
    if pointer.exists():
        try:
            return _from_pointer(run_dir), []
        except RunError as e:
            problems.append(str(e))
    elif not pairs:
        return None, []
    else:
        problems.append(f"{pointer} is missing")
    for epoch, state_path in pairs:
        try:
            state = _parse_state(state_path, state_path.with_suffix(".keras"))
        except RunError as e:
            problems.append(str(e))
            continue
        if state.epoch != epoch:
            problems.append(f"{state_path} holds epoch {state.epoch}")
            continue
        notes = [f"Note: the training state is damaged: {'; '.join(problems)}.",
                 f"Note: resuming from the newest complete checkpoint instead: "
                 f"{state.model_path} (epoch {state.epoch}); {pointer} is rewritten after "
                 "the next epoch."]
        return state, notes
    raise DamagedStateError(
        f"Cannot resume {run_dir}: its training state is damaged ({'; '.join(problems)}) and "
        f"no complete checkpoint is left in {ckpt_dir}. Restore the damaged file if you have a "
        f"copy; else start again with another --output-dir (or delete {run_dir}). Its "
        f"{BEST_MODEL} / {LAST_MODEL}, if present, still load with evaluate.py.")


# ---------------------------------------------------------------------------------------
# One writer per run directory


class RunLock:
    """The lock of the one process that writes a run directory (`lock_run`).

    An exclusive `fcntl.flock` on ``RUN/.lock``, which holds the owner's PID as text
    (for the message of the second writer). The OS releases the lock when the process
    dies, however it dies (SIGKILL included), so a lock is never stale; the file itself
    stays (unlinking it would race with a process that just opened it). ``flock`` is
    local to a machine (on NFS Linux emulates it with byte-range locks, which work
    where the server supports locking).

    Multi-worker training: the chief locks ``RUN``; the worker of index ``i`` (which
    writes ``RUN/workers/<i>``) locks ``RUN/workers/<i>``. So two runs on one directory
    collide on the chief's lock, and a stray second worker ``i`` on worker i's.
    Readers (evaluate.py, figures, notebooks) take no lock.

    Args:
        run_dir: the directory to lock (created if needed).

    Raises (on entering):
        RunLockedError: another live process holds the lock (names the directory and
            its PID).
        RunWriteError: the directory or lock file cannot be created.
    """

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd = None

    def acquire(self):
        with _write_errors(self.run_dir):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise RunLockedError(
                f"{self.run_dir} is being written by another process (PID {holder}, which holds "
                f"{self.path}). Wait for it to finish, stop it, or pass another --output-dir.") from None
        except OSError as e:
            os.close(fd)
            raise RunWriteError(self.path, e) from e
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the lock holds without the PID text (a full disk): the message says "unknown"
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def lock_run(run_dir):
    """``with lock_run(run_dir):`` holds `RunLock` of ``run_dir`` for the block."""
    return RunLock(run_dir)


# ---------------------------------------------------------------------------------------
# Loading models


def load_model(path, *, unsafe=False):
    """Loads a ``.keras`` model for inference (uncompiled), safely by default.

    Args:
        path: the ``.keras`` file.
        unsafe: allow a model that runs arbitrary code on loading (a ``Lambda`` layer
            with Python bytecode): ``safe_mode=False``. Only for files you trust.

    Raises:
        UnsafeModelError: the file needs ``unsafe=True``.
        RunError: the file is not a readable Keras model.
    """
    import keras

    import keras_alexnet  # noqa: F401  (registers the custom layers)

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise RunError(
            f"Cannot load the model {path}: not a .keras archive (a zip file); is it "
            "truncated, or another format?"
        )
    try:
        return keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except ValueError as e:
        message = str(e)
        if not unsafe and ("safe_mode" in message or "unsafe_deserialization" in message):
            raise UnsafeModelError(
                f"Refusing to load {path}: it holds code that would run when the model is "
                f"loaded ({message.split('.')[0]}). Load it only if you trust where it came "
                "from, with --unsafe-load (keras safe_mode=False)."
            ) from e
        raise RunError(f"Cannot load the model {path}: {message}") from e
    except (OSError, zipfile.BadZipFile, KeyError, TypeError) as e:
        raise RunError(f"Cannot load the model {path}: {type(e).__name__}: {e}") from e


def find_model(directory):
    """The model of a directory: ``best.keras``, else ``last.keras``, else ``model.keras``.

    Raises:
        RunNotFoundError: naming the directory and the files looked for.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise RunNotFoundError(f"Run directory not found: {directory}")
    for name in MODEL_FILES:
        if (directory / name).is_file():
            return directory / name
    raise RunNotFoundError(
        f"No model in {directory}: none of {', '.join(str(directory / n) for n in MODEL_FILES)} exists."
    )


def find_run(path):
    """The model file and the run directory (or None) that a path names.

    - A directory holding ``config.json`` (a run, a model directory): its model
      (`find_model`).
    - A ``.keras`` file: itself; its run directory is its folder when that holds
      ``config.json`` (``RUN/best.keras``), or the folder above for
      ``RUN/checkpoints/epoch-NNNN.keras``.
    - A directory without ``config.json`` is searched for a model the same way but
      has no run (its preprocessing is unknown).

    Returns:
        ``(model_path, run_dir or None)``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise RunNotFoundError(f"Checkpoint not found: {path} does not exist.")
    if path.is_dir():
        return find_model(path), path if (path / CONFIG_FILE).is_file() else None
    if path.suffix != ".keras":
        raise RunError(
            f"{path} is not a .keras model file; pass a run directory of train.py (or a "
            f"model directory of keras_alexnet.convert) or its {' / '.join(MODEL_FILES)}."
        )
    candidates = [path.parent]
    if path.parent.name == CHECKPOINTS_DIR:
        candidates.append(path.parent.parent)
    return path, next((d for d in candidates if (d / CONFIG_FILE).is_file()), None)


# ---------------------------------------------------------------------------------------
# Preprocessing


@dataclasses.dataclass(eq=False)
class Preprocessing:
    """How an image becomes what a model was trained (or converted) to take.

    An image is decoded to RGB, its shorter side resized to ``resize_size`` and its
    central square kept (§2); the crops of ``crop_size`` are taken from that square
    (centre or ten crops, §4.1); from each RGB crop ``x`` in ``[0, 255]`` the network
    gets ``channel_order((x - mean) / std)``, the mean image cropped at the same window.
    Any input scale inside the model (its ``input_scale`` layer) comes after this.

    Attributes:
        crop_size: side of the crops (the model's input size).
        resize_size: side of the central square.
        mean_mode: ``"image"``, ``"channel"`` or ``"none"``.
        mean: float32 RGB mean in pixel units, ``(resize_size, resize_size, 3)`` or
            ``(3,)``, or None.
        std: float32 ``(3,)`` RGB divisor in pixel units, or None (1).
        channel_order: ``"RGB"`` or ``"BGR"`` (what the network takes).
        source: where these come from, in words (shown by the tools).
        stats_path: the statistics file the mean came from, or None.
    """

    crop_size: int
    resize_size: int
    mean_mode: str = "none"
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    channel_order: str = "RGB"
    source: str = ""
    stats_path: Path | None = None

    def __post_init__(self):
        if self.mean_mode not in MEAN_MODES:
            raise RunError(f"mean must be one of {MEAN_MODES}, got {self.mean_mode!r} ({self.source}).")
        if self.channel_order not in data_lib.CHANNEL_ORDERS:
            raise RunError(f"channel_order must be RGB or BGR, got {self.channel_order!r} ({self.source}).")
        if not 0 < self.crop_size <= self.resize_size:
            raise RunError(f"resize size {self.resize_size} is smaller than the crops "
                           f"{self.crop_size}x{self.crop_size} ({self.source}).")
        if self.mean is not None:
            mean = np.asarray(self.mean, np.float32)
            if mean.ndim == 3 and mean.shape[0] != self.resize_size:
                import tensorflow as tf

                mean = tf.image.resize(mean, [self.resize_size] * 2, antialias=True).numpy()
            self.mean = mean
        if self.std is not None:
            self.std = np.asarray(self.std, np.float32)

    def dataset(self, source, batch_size=32, crops="center", counter=None):
        """`keras_alexnet.data.evaluation_dataset` of ``source`` with this preprocessing."""
        return data_lib.evaluation_dataset(
            source, batch_size, mean=self.mean if self.mean is not None else "none",
            crops=crops, crop_size=self.crop_size, resize_size=self.resize_size,
            std=self.std, channel_order=self.channel_order, counter=counter)

    def load(self, paths):
        """The centre crops of image files as RGB ``[0, 255]`` float32 ``(n, c, c, 3)``:
        what is drawn (`network_input` makes what the model gets). Decoded and resized by
        `keras_alexnet.data.load_image`, as in evaluation."""
        return np.stack([
            data_lib.center_crop(data_lib.load_image(str(p), self.resize_size), self.crop_size).numpy()
            for p in paths
        ]).astype(np.float32)

    def network_input(self, crops):
        """What the model gets for centre crops from `load` (RGB ``[0, 255]``): the mean
        (cropped at the centre window), the std and the channel order applied, exactly as
        `dataset` does."""
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(crops, np.float32))
        if self.mean is not None:
            mean = tf.constant(self.mean)
            if mean.shape.rank == 3:
                mean = data_lib.center_crop(mean, self.crop_size)
            x = x - mean
        return data_lib.normalize(x, self.std, self.channel_order).numpy()

    def to_json(self):
        """JSON-ready description (the mean as where it came from, not its values)."""
        return {
            "crop_size": self.crop_size, "resize_size": self.resize_size,
            "mean": self.mean_mode,
            "mean_rgb": self.mean.tolist() if self.mean is not None and self.mean.ndim == 1 else None,
            "std_rgb": self.std.tolist() if self.std is not None else None,
            "channel_order": self.channel_order, "source": self.source,
            "stats": str(self.stats_path) if self.stats_path else None,
        }


# ---------------------------------------------------------------------------------------
# Runs


@dataclasses.dataclass(eq=False)
class Run:
    """A run (or model) directory opened by `open_run`, its preprocessing resolved once.

    Attributes:
        path: the run or model directory, or None for a bare ``.keras`` file.
        model_path: the ``.keras`` file (``best.keras``, ``last.keras`` or ``model.keras``).
        config: ``config.json`` ({} for a bare model).
        kind: ``"trained"`` (train.py), ``"converted"`` (keras_alexnet.convert) or
            ``"model"`` (a bare ``.keras``).
        preprocessing: the `Preprocessing` to feed the model with.
        class_names: the class names in output order (wnids, folder names), or None.
        class_index: ``"imagenet"`` / ``"compact"``, or ``"auto"`` when unknown.
        num_classes: the number of outputs.
        overrides: run settings replaced by explicit arguments of `open_run`, in words.
        unsafe: whether `model` may load code (``safe_mode=False``).
    """

    path: Path | None
    model_path: Path
    config: dict
    kind: str
    preprocessing: Preprocessing
    class_names: tuple | None
    class_index: str
    num_classes: int | None
    overrides: tuple = ()
    unsafe: bool = False

    @functools.cached_property
    def model(self):
        """The model (uncompiled), loaded safely on first use and checked against the
        run's crop size and class count."""
        model = load_model(self.model_path, unsafe=self.unsafe)
        _check_model(model, self)
        return model

    @property
    def recipe(self):
        """The run's `keras_alexnet.recipes.Recipe`, or None (not trained by train.py)."""
        recipe = self.config.get("recipe")
        return recipes.Recipe.from_dict(recipe) if recipe else None

    @property
    def settings(self):
        return self.config.get("settings") or {}

    def initial_model(self):
        """A model with the run's architecture, initialised as its recipe's seed gives:
        the weights before training, to compare trained ones with."""
        from keras_alexnet.model import AlexNet

        recipe = self.recipe
        if recipe is None:
            raise RunError(f"{self.path or self.model_path} has no recipe (not trained by train.py).")
        return AlexNet(classes=self.num_classes, grouping=self.settings.get("grouping", "towers"),
                       **recipe.model_kwargs())

    def display_names(self):
        """`keras_alexnet.imagenet.class_display_names` of the model's outputs."""
        return imagenet.class_display_names(self.class_names, self.num_classes)

    def label(self, path):
        """Class index of an image in a folder named after one of the run's classes, else -1."""
        name = Path(path).parent.name
        return self.class_names.index(name) if self.class_names and name in self.class_names else -1

    def metrics(self):
        """`read_metrics` of the run's ``metrics.csv``, or None when it has none."""
        if self.path is None or not (self.path / METRICS_FILE).is_file():
            return None
        return read_metrics(self.path / METRICS_FILE)

    def summary(self):
        return read_summary(self.path) if self.path is not None else None

    def data_dir(self):
        """The run's data folder, or None (a TFDS run, a converted model). A relative
        ``--data-dir`` is relative to the directory train.py ran in (``working_dir``)."""
        data = self.config.get("data") or {}
        if data.get("tfds") or not data.get("data_dir"):
            return None
        root = Path(data["data_dir"])
        if not root.is_absolute() and self.config.get("working_dir"):
            root = Path(self.config["working_dir"]) / root
        return root

    def files(self, split="val"):
        """Image files of ``split`` of the run's own dataset (sorted by class folder),
        or [] when its data is not a folder here."""
        root = self.data_dir()
        if root is None:
            return []
        folder = root / (self.config.get("data") or {}).get(f"{split}_split", split)
        return data_lib.list_images(folder) if folder.is_dir() else []

    def figures_dir(self):
        return (self.path or self.model_path.parent) / FIGURES_DIR

    def describe(self):
        """One paragraph on the run: what it is, classes, epochs, errors, chance."""
        lines = [f"run: {self.path or self.model_path}"]
        if self.kind == "converted":
            src = self.config.get("source") or {}
            lines.append(f"converted from {src.get('format')} ({src.get('variant')}): {src.get('weights')}")
        elif self.kind == "trained":
            data = self.config.get("data") or {}
            lines.append(f"preset {data.get('preset', '?')}, {self.num_classes} classes "
                         f"({self.class_index} index), data {data.get('data_dir')}")
        m = self.metrics()
        if m is not None and "val_top1_error" in m and len(m["val_top1_error"]):
            err = m["val_top1_error"]
            best = int(np.nanargmin(err))
            epochs = m["epoch"] if "epoch" in m else np.arange(1, len(err) + 1)
            top5 = m.get("val_top5_error", np.full(len(err), np.nan))[-1]
            lines.append(f"{len(err)} epochs trained; last validation top-1 error {err[-1]:.1%}, "
                         f"top-5 {top5:.1%}; best top-1 {err[best]:.1%} at epoch {int(epochs[best])}")
        if self.num_classes:
            lines.append(f"chance: top-1 error {1 - 1 / self.num_classes:.1%}, "
                         f"top-5 error {max(0.0, 1 - 5 / self.num_classes):.1%}")
        return "\n".join(lines)


def _check_model(model, run):
    shape = tuple(model.input_shape)
    where = f"its run {run.path / CONFIG_FILE}" if run.path else "the arguments"
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise RunError(f"{run.model_path}: expected a model of square images (None, c, c, 3), "
                       f"got input shape {shape}.")
    if int(shape[1]) != run.preprocessing.crop_size:
        raise RunError(f"{run.model_path} takes {shape[1]}x{shape[2]} inputs but {where} says "
                       f"crop_size {run.preprocessing.crop_size}.")
    classes = int(model.output_shape[-1])
    if run.num_classes is not None and classes != run.num_classes:
        raise RunError(f"{run.model_path} has {classes} outputs but {where} says "
                       f"num_classes {run.num_classes}.")


def _converted_preprocessing(run_dir, config, mean, resize_size, overrides):
    spec = config.get("preprocessing") or {}
    where = run_dir / CONFIG_FILE
    try:
        crop = int(spec["crop_size"])
        mode = spec.get("mean", "none")
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{where}: its preprocessing block lacks crop_size ({e}).") from e
    if mean is not None and mean != mode:
        overrides.append(f"mean {mean!r} instead of the model's {mode!r}")
        if mean == "image" and not (run_dir / MEAN_IMAGE_FILE).is_file():
            raise RunError(f"--mean image: {run_dir / MEAN_IMAGE_FILE} does not exist.")
        mode = mean
    run_resize = int(spec.get("resize_size") or data_lib.default_resize_size(crop))
    if resize_size is not None and resize_size != run_resize:
        overrides.append(f"resize size {resize_size} instead of the model's {run_resize}")
    array = None
    if mode == "image":
        path = run_dir / MEAN_IMAGE_FILE
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RunError(f"Cannot read the mean image {path}: {e}") from e
    elif mode == "channel":
        if spec.get("mean_rgb") is None:
            raise RunError(f"{where}: mean 'channel' without mean_rgb.")
        array = np.asarray(spec["mean_rgb"], np.float32)
    return Preprocessing(
        crop_size=crop, resize_size=resize_size or run_resize, mean_mode=mode, mean=array,
        std=spec.get("std_rgb"), channel_order=spec.get("channel_order", "RGB"),
        source=f"{where} ({spec.get('provenance', 'converted model')})")


def _trained_preprocessing(run_dir, config, stats, mean, resize_size, overrides):
    recipe = config.get("recipe") or {}
    where = run_dir / CONFIG_FILE
    crop = int(recipe.get("crop_size") or data_lib.CROP_SIZE)
    run_mean = recipe.get("mean", "image")
    run_resize = int(recipe.get("resize_size") or data_lib.default_resize_size(crop))
    if mean is not None and mean != run_mean:
        overrides.append(f"mean {mean!r} instead of the run's {run_mean!r}")
    if resize_size is not None and resize_size != run_resize:
        overrides.append(f"resize size {resize_size} instead of the run's {run_resize}")
    mode = mean or run_mean
    if stats is not None:
        overrides.append(f"statistics {stats} instead of the run's {run_dir / STATS_FILE}")
        stats_path = Path(stats)
    elif mode != "none":
        stats_path = run_dir / STATS_FILE
        if not stats_path.is_file():
            raise RunNotFoundError(
                f"The run {run_dir} subtracted the {run_mean} mean but its statistics "
                f"{stats_path} are missing; pass --stats FILE with the statistics it was "
                "trained with.")
    else:
        stats_path = None
    return _stats_preprocessing(crop, resize_size or run_resize, mode, stats_path, str(where))


def _stats_preprocessing(crop, resize, mode, stats_path, source):
    if stats_path is not None and mode == "none":
        raise RunError(f"The statistics {stats_path} would not be used: the mean is 'none'. "
                       "Pass --mean image or channel with them, or leave --stats out.")
    array = None
    if mode != "none":
        stats = load_stats(stats_path)
        array = stats.mean_image if mode == "image" else stats.channel_mean
    return Preprocessing(crop_size=crop, resize_size=resize, mean_mode=mode, mean=array,
                         source=source, stats_path=stats_path if mode != "none" else None)


def open_run(path, *, stats=None, mean=None, resize_size=None, class_index="auto", unsafe=False):
    """Opens a run directory, a model directory, or a ``.keras`` file (inside one or bare).

    With a run: crop size, resize size and mean mode come from its ``config.json``
    (the recipe's, or a converted model's ``preprocessing``), the mean from its
    ``stats.npz`` (or ``mean_image.npy``), the class order from ``class_names`` /
    ``class_index``. ``stats``, ``mean`` and ``resize_size`` given explicitly replace
    the run's values (listed in ``Run.overrides``). Without a run, the preprocessing
    must be given: ``stats`` (mean ``"image"`` by default) or ``mean="none"``; the
    resize size defaults to ``crop * 256 / 227``.

    Args:
        path: a run or model directory, or a ``.keras`` file.
        stats: path of a statistics ``.npz`` (``python -m keras_alexnet.stats``).
        mean: ``"image"``, ``"channel"`` or ``"none"``.
        resize_size: side of the central square.
        class_index: for a bare model: ``"auto"``, ``"imagenet"`` or ``"compact"``.
        unsafe: see `load_model`.

    Returns:
        A `Run`; its ``model`` loads on first use.

    Raises:
        RunNotFoundError, UnsafeModelError, RunError: with the path.
    """
    if mean not in (None, *MEAN_MODES):
        raise RunError(f"mean must be 'image', 'channel' or 'none', got {mean!r}.")
    model_path, run_dir = find_run(path)
    overrides = []
    if run_dir is None:
        if stats is None and mean != "none":  # checked before the slow load
            raise RunError(
                f"{model_path} is not inside a run directory ({model_path.parent / CONFIG_FILE} "
                "does not exist), so the preprocessing it was trained with is unknown. Pass it "
                "explicitly: --stats FILE (the training set's statistics, from `python -m "
                "keras_alexnet.stats`) or --mean none.")
        model = load_model(model_path, unsafe=unsafe)
        crop = int(model.input_shape[1]) if model.input_shape[1] else data_lib.CROP_SIZE
        mode = mean or "image"
        preprocessing = _stats_preprocessing(
            crop, resize_size or data_lib.default_resize_size(crop), mode,
            Path(stats) if stats is not None else None, "arguments")
        run = Run(path=None, model_path=model_path, config={}, kind="model",
                  preprocessing=preprocessing, class_names=None, class_index=class_index,
                  num_classes=int(model.output_shape[-1]), unsafe=unsafe)
        _check_model(model, run)
        run.__dict__["model"] = model  # the cached property, already loaded
        return run

    config = read_config(run_dir)
    kind = config.get("kind", "trained")
    if kind == "converted":
        if stats is not None:
            raise RunError(f"--stats does not apply to the converted model {run_dir}: it "
                           f"carries its own preprocessing ({run_dir / CONFIG_FILE}).")
        preprocessing = _converted_preprocessing(run_dir, config, mean, resize_size, overrides)
    else:
        preprocessing = _trained_preprocessing(run_dir, config, stats, mean, resize_size, overrides)
    names = config.get("class_names")
    class_names = tuple(str(n) for n in names) if names else None
    num_classes = config.get("num_classes")
    num_classes = int(num_classes) if num_classes is not None else None
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise RunError(f"{run_dir / CONFIG_FILE} lists {len(class_names)} class names for "
                       f"num_classes {num_classes}.")
    return Run(path=run_dir, model_path=model_path, config=config, kind=kind,
               preprocessing=preprocessing, class_names=class_names,
               class_index=config.get("class_index") or "auto", num_classes=num_classes,
               overrides=tuple(overrides), unsafe=unsafe)


def write_model_dir(out_dir, model, *, preprocessing, source, mean_image=None, class_names=None):
    """Writes a model directory (a converted network) that `open_run` opens.

    Written into a temporary sibling directory and renamed into place, so ``out_dir``
    is never half-written.

    Args:
        out_dir: the directory to create (must not exist, or be empty).
        model: the Keras model.
        preprocessing: the ``preprocessing`` block of ``config.json`` (see the module
            docstring).
        source: provenance of the weights (format, file, checksum, variant).
        mean_image: RGB float32 ``(S, S, 3)`` in pixel units, when the mean mode is image.
        class_names: the output order; default the 1000 ImageNet wnids.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunError(f"{out_dir} exists and is not empty; choose another --out.")
    names = [str(n) for n in (class_names or imagenet.imagenet_class_names())]
    standard = tuple(names) == tuple(imagenet.imagenet_class_names())
    config = {"kind": "converted", "num_classes": len(names), "class_names": names,
              "class_index": "imagenet" if standard else "compact",
              "preprocessing": preprocessing, "source": source, "versions": versions()}
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        atomic_save_model(model, tmp / CONVERTED_MODEL)
        if mean_image is not None:
            atomic_save_npy(np.asarray(mean_image, np.float32), tmp / MEAN_IMAGE_FILE)
        write_config(tmp, config)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(out_dir.parent)
    return out_dir
