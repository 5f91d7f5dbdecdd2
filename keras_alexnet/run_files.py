"""The files of a run directory: their names, how they are written and read.

Files of a run directory (the names below are the only place they are spelled):

- ``config.json``: the resolved recipe, data and run settings, the class names
  (`write_config`, `check_config` raises `ConfigMismatchError` on a resume with other
  flags);
- ``stats.npz``: the dataset statistics (mean image, RGB PCA) the run used;
- ``metrics.csv``: one row per finished epoch (`format_metrics`, `read_metrics`);
- ``tensorboard/``: TensorBoard logs;
- ``checkpoints/`` and ``checkpoint.json``: the training state
  (`keras_alexnet.training_state`);
- ``best.keras`` (lowest validation top-1 error) and ``last.keras``;
- ``summary.json``: the final figures (`write_summary`, `read_summary`);
- ``figures/``: PNGs of ``python -m keras_alexnet.visualize`` and the notebooks.

A model directory (a converted published network, `write_model_dir`)
holds ``model.keras``, ``config.json`` with ``"kind": "converted"`` and
``mean_image.npy`` when it subtracts a mean image.

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
import errno
import fcntl
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from keras_alexnet import recipes
from keras_alexnet.imagenet import imagenet_class_names
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
    # The weights a fine-tuned run started from (train.py --weights): the same file, by
    # its sha256, wherever it is now.
    old, new = saved.get("weights") or {}, config.get("weights") or {}
    if old.get("sha256") != new.get("sha256"):
        what = (f"was fine-tuned from --weights {old.get('spec')} ({old.get('path')}, sha256 "
                f"{str(old.get('sha256'))[:12]}...)" if old else "was trained from scratch (no --weights)")
        given = f"--weights {new.get('spec')} (sha256 {str(new.get('sha256'))[:12]}...)" if new else "no --weights"
        raise ConfigMismatchError(
            f"{run_dir} holds a run that {what}; it cannot be resumed with {given}. Use the "
            "same --weights to resume it, or another --output-dir for a new run.")
    old_recipe = saved.get("recipe")
    if old_recipe:
        # A recipe written before `Recipe.variant` existed built the paper's network
        # (its LRN within each tower) whatever the preset: read it as that variant.
        variant = (config.get("recipe") or {}).get("variant", "paper")
        if "variant" not in old_recipe and variant != "paper":
            raise ConfigMismatchError(
                f"{run_dir} was trained before presets named their network: it is the "
                f"paper's variant (LRN within each tower, {path}), not {variant!r}, and "
                "cannot be resumed as that. Its models still evaluate as they are; start the "
                f"{variant} run in another --output-dir.")
        saved["recipe"] = json.loads(json.dumps(
            recipes.Recipe.from_dict(old_recipe).to_dict(), default=str))
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
# A model directory (a converted network)


def write_model_dir(out_dir, model, *, preprocessing, source, mean_image=None, class_names=None):
    """Writes a model directory (a converted network) that `keras_alexnet.runs.open_run` opens:
    ``model.keras``, ``config.json`` with ``"kind": "converted"``, the class names and a
    ``preprocessing`` block (crop and resize size, mean mode, ``mean_rgb`` / ``std_rgb`` in RGB
    pixel units, ``channel_order``, provenance), and ``mean_image.npy`` when it subtracts a
    mean image.

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
    names = [str(n) for n in (class_names or imagenet_class_names())]
    standard = tuple(names) == tuple(imagenet_class_names())
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
