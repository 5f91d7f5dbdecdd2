"""The training state of a run: what resumes it, written so that a kill at any moment
leaves a complete one.

``checkpoint.json`` points at ``checkpoints/epoch-NNNN.keras`` (model and optimizer)
and ``epoch-NNNN.json`` (history and callback state): `TrainingState`, written by
`save_training_state` after every epoch, found (damaged files skipped, with notes) by
`find_training_state`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import zipfile
from pathlib import Path

from keras_alexnet.run_files import (
    BEST_MODEL,
    CHECKPOINTS_DIR,
    LAST_MODEL,
    MONITOR,
    POINTER_FILE,
    DamagedStateError,
    RunError,
    RunWriteError,
    _read_json,
    _write_errors,
    atomic_link_or_copy,
    atomic_save_model,
    atomic_write_text,
    write_metrics,
)


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
        # The state of the training callbacks (keras_alexnet.callbacks): name -> its numbers.
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
