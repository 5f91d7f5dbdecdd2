"""Runs that last days: divergence stops cleanly, one writer per run
directory, a failed write loses nothing, damaged state is never a traceback,
decompression bombs are skipped, and the files a failed write leaves (kills: tests/test_kills.py).

train.py runs as a subprocess only where the process is the point: a second writer (exit
status 2, which takes a second process) and every kill. The other statuses (divergence 3, full
disk 4) are what train.py's main returns in this process (tests/train_cli.py), which
``sys.exit(main())`` makes the process's; tests/test_data_service.py sees status 5 from a
process."""

import errno
import io
import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fault_worker
import train_cli
from keras_alexnet import callbacks, data, datasets, images, recipes, run_files, synthetic, training_state

from tiny_train import finite_model, flags, leftovers, make_tiny_data, no_traceback, run_train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory)


# Divergence ----------------------------------------------------------------------------


def test_first_epoch_divergence_exits_3_and_writes_no_model(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    code, out, err = train_cli.main(flags(tiny_data, run_dir, 3, "--lr", "1e6"))
    assert code == 3, err[-3000:]
    # Seen both: the loss of step 2 non-finite, or finite with the weights after it NaN
    # (then the end-of-epoch check finds a NaN val_loss before anything is saved).
    assert re.search(r"training diverged: (loss (nan|inf) at step [12] of 2 of epoch 1 |"
                     r"val_loss (nan|inf) at the end of epoch 1 \(after step 2 of 2\) )", err), err[-2000:]
    assert "learning rate 1e+06" in err and "--lr 100000" in err
    assert f"--output-dir {run_dir}-lr100000" in err  # the exact command of a new run
    assert "No model was written" in err
    for name in (run_files.BEST_MODEL, run_files.LAST_MODEL, run_files.POINTER_FILE, run_files.METRICS_FILE):
        assert not (run_dir / name).exists(), name
    assert not any((run_dir / run_files.CHECKPOINTS_DIR).glob("*"))


def test_later_epoch_divergence_keeps_the_last_finite_state(tmp_path, tiny_data, monkeypatch):
    run_dir = tmp_path / "run"
    args = flags(tiny_data, run_dir, 3)
    fault_worker.inject("lr:2:1e7", monkeypatch.setattr)  # epoch 2 jumps to 1e7
    code, out, err = train_cli.main(args)
    assert code == 3, err[-3000:]
    assert re.search(r"training diverged: .* epoch 2 (\(after step 2 of 2\) )?\(learning rate 1e\+07\)",
                     err), err[-2000:]
    assert "still hold the last finite state (epoch 1)" in err
    assert "python train.py " + " ".join(args) in err  # the command that resumes
    pointer = json.loads((run_dir / run_files.POINTER_FILE).read_text())
    assert pointer["epoch"] == 1
    assert [p.name for p in sorted((run_dir / run_files.CHECKPOINTS_DIR).iterdir())] == [
        "epoch-0001.json", "epoch-0001.keras"]
    for path in (run_dir / pointer["model"], run_dir / run_files.BEST_MODEL, run_dir / run_files.LAST_MODEL):
        assert finite_model(path), path
    rows = run_files.read_metrics(run_dir)
    assert list(rows["epoch"]) == [1.0] and np.isfinite(rows["loss"]).all()
    assert leftovers(run_dir) == []


def test_recover_goes_back_to_the_last_good_epoch_at_a_tenth_of_the_rate(tmp_path, tiny_data, monkeypatch):
    run_dir = tmp_path / "run"
    args = flags(tiny_data, run_dir, 3, "--on-divergence", "recover")
    fault_worker.inject("lr:2:1e7", monkeypatch.setattr)  # epoch 2 jumps once
    code, out, err = train_cli.main(args)
    assert code == 0, err[-3000:]
    assert re.search(r"epoch 2 (\(after step 2 of 2\) )?\(learning rate 1e\+07\)\. Recovery 1/3: "
                     r"restarting from epoch 1", out), out[-2000:]
    rate = recipes.preset("tiny").learning_rate  # the run's rate before the jump
    assert f"learning rate {rate:.3g} -> {rate / 10:.3g}" in out
    metrics = run_files.read_metrics(run_dir)
    assert list(metrics["epoch"]) == [1.0, 2.0, 3.0]  # epoch 2 once: the diverged try is not kept
    np.testing.assert_allclose(metrics["lr"], [rate, rate / 10, rate / 10], rtol=1e-5)
    state, _ = training_state.find_training_state(run_dir)
    assert state.callbacks["divergence"] == {"recoveries": 1}
    assert finite_model(run_dir / run_files.BEST_MODEL) and finite_model(run_dir / run_files.LAST_MODEL)


def test_recover_gives_up_after_max_recoveries(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    code, out, err = train_cli.main(flags(tiny_data, run_dir, 2, "--lr", "1e6", "--on-divergence", "recover",
                                          "--max-recoveries", "2"))
    assert code == 3, err[-3000:]
    assert "Recovery 1/2: restarting from the initial weights with learning rate 1e+06 -> 1e+05" in out
    assert "Recovery 2/2: restarting from the initial weights with learning rate 1e+05 -> 1e+04" in out
    assert "(learning rate 1e+04), after 2 recoveries" in err
    assert not (run_dir / run_files.BEST_MODEL).exists() and not (run_dir / run_files.POINTER_FILE).exists()


def test_checkpoint_refuses_a_non_finite_epoch():
    """The last line of defence: SaveTrainingState never saves NaN (a last step that made the
    weights NaN logs a finite loss)."""
    import keras

    class Model:
        weights = [keras.Variable(np.ones(3, np.float32), name="w")]
        optimizer = keras.optimizers.SGD(0.1)

    callbacks.check_finite(Model(), {"loss": 1.0, "val_loss": 2.0}, 1)
    with pytest.raises(callbacks.TrainingDiverged, match="val_loss nan at the end of epoch 4"):
        callbacks.check_finite(Model(), {"loss": 1.0, "val_loss": float("nan")}, 4)
    Model.weights[0].assign([1.0, np.inf, 0.0])
    with pytest.raises(callbacks.TrainingDiverged, match="weights of w not finite"):
        callbacks.check_finite(Model(), {"loss": 1.0}, 2)


# One writer per run directory ----------------------------------------------------------


def test_run_lock_is_exclusive_and_names_the_holder(tmp_path):
    with run_files.lock_run(tmp_path / "run") as lock:
        assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(run_files.RunLockedError, match=rf"{tmp_path / 'run'}.*PID {os.getpid()}"):
            run_files.RunLock(tmp_path / "run").acquire()  # another open file: flock conflicts
        assert lock.path == tmp_path / "run" / ".lock"
    with run_files.lock_run(tmp_path / "run"):  # released on exit
        pass


def test_second_writer_exits_2_naming_the_holder(tmp_path, tiny_data, monkeypatch):
    """A second train.py (a process: the status a shell sees) on a run that this process is
    training is refused; the run it tried to join finishes undisturbed. (A SIGKILLed
    writer leaves no stale lock: `killed_and_resumed`.)"""
    run_dir = tmp_path / "run"
    args = flags(tiny_data, run_dir, 1)
    second = []

    def on_epoch_begin(self, e, logs=None, _orig=callbacks.EpochInfo.on_epoch_begin):
        if not second:  # while this run holds the lock
            assert (run_dir / run_files.LOCK_FILE).read_text().strip() == str(os.getpid())
            second.append(run_train(args))
        _orig(self, e, logs)

    monkeypatch.setattr(callbacks.EpochInfo, "on_epoch_begin", on_epoch_begin)
    code, out, err = train_cli.main(args)
    assert code == 0, err[-3000:]
    assert second[0].returncode == 2, second[0].stderr[-3000:]
    no_traceback(second[0])
    assert f"{run_dir} is being written by another process (PID {os.getpid()}" in second[0].stderr
    assert list(run_files.read_metrics(run_dir)["epoch"]) == [1.0]


# Write errors --------------------------------------------------------------------------


def test_full_disk_exits_4_leaves_nothing_and_the_same_command_resumes(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    args = flags(tiny_data, run_dir, 2)
    with pytest.MonkeyPatch.context() as patch:
        fault_worker.inject("enospc-save:epoch-0002.keras", patch.setattr)
        code, out, err = train_cli.main(args)
    assert code == 4, err[-3000:]
    assert (f"Cannot write {run_dir}/checkpoints/epoch-0002.keras: No space left on device "
            "(the disk is full: free some space, then run the same command again") in err
    assert leftovers(run_dir) == []  # the half-written .tmp-epoch-0002.keras is gone
    assert sorted(p.name for p in (run_dir / run_files.CHECKPOINTS_DIR).iterdir()) == [
        "epoch-0001.json", "epoch-0001.keras"]
    pointer = json.loads((run_dir / run_files.POINTER_FILE).read_text())
    assert pointer["epoch"] == 1 and finite_model(run_dir / pointer["model"])
    code, out, err = train_cli.main(args)  # "space freed": the same command, no fault
    assert code == 0, err[-3000:]
    assert f"Resuming {run_dir} after epoch 1" in out
    assert list(run_files.read_metrics(run_dir)["epoch"]) == [1.0, 2.0]


class _TinyModel:
    """Stands in for a Keras model in `save_training_state`: writes a small zip."""

    def save(self, path):
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("config.json", "{}")


def test_failed_pointer_write_removes_the_epochs_files(tmp_path, monkeypatch):
    history = [{"epoch": 1, "val_top1_error": 0.5}]
    training_state.save_training_state(tmp_path, _TinyModel(), history)
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == run_files.POINTER_FILE:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    history.append({"epoch": 2, "val_top1_error": 0.4})
    with pytest.raises(run_files.RunWriteError, match=r"checkpoint.json: Disk quota exceeded \(the disk quota"):
        training_state.save_training_state(tmp_path, _TinyModel(), history, best=0.5)
    assert sorted(p.name for p in (tmp_path / run_files.CHECKPOINTS_DIR).iterdir()) == [
        "epoch-0001.json", "epoch-0001.keras"]
    assert leftovers(tmp_path) == []
    state, notes = training_state.find_training_state(tmp_path)
    assert state.epoch == 1 and notes == []


@pytest.mark.parametrize("code, hint", [(errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
                                        (errno.ENOSPC, "disk is full")])
def test_write_errors_name_the_path_and_what_to_do(tmp_path, monkeypatch, code, hint):
    def fail(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(run_files.RunWriteError, match=hint) as info:
        run_files.atomic_write_text(tmp_path / "config.json", "{}")
    assert info.value.path == tmp_path / "config.json" and info.value.errno == code
    assert str(tmp_path / "config.json") in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no temporary file


def test_real_full_tmpfs(tmp_path, tiny_data):
    """A 30 MB tmpfs holds one checkpoint of 19 MB: epoch 2's does not fit beside it, whichever
    epoch is best (with room for two, whether a third fits depends on which epoch best.keras
    keeps alive, and that on the run's random draws)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run_dir = mount / "run"
        code, out, err = train_cli.main(flags(tiny_data, run_dir, 4))
        assert code == 4, err[-3000:]
        assert "No space left on device" in err and str(run_dir) in err
        assert leftovers(run_dir) == []
        pointer = json.loads((run_dir / run_files.POINTER_FILE).read_text())
        assert finite_model(run_dir / pointer["model"])
        assert sorted(p.name for p in (run_dir / run_files.CHECKPOINTS_DIR).iterdir()) == [
            f"epoch-{pointer['epoch']:04d}.json", f"epoch-{pointer['epoch']:04d}.keras"]
    finally:
        subprocess.run(["umount", str(mount)])


# Damaged state -------------------------------------------------------------------------


def make_state(run_dir, epochs=(1, 2)):
    """A run directory with checkpoint pairs of ``epochs`` and the pointer at the last."""
    ckpt = run_dir / run_files.CHECKPOINTS_DIR
    ckpt.mkdir(parents=True)
    for e in epochs:
        _TinyModel().save(ckpt / f"epoch-{e:04d}.keras")
        state = {"epoch": e, "history": [{"epoch": i} for i in range(1, e + 1)],
                 "callbacks": {"plateau": {"best": 0.5, "wait": 0, "reductions": 0}}}
        (ckpt / f"epoch-{e:04d}.json").write_text(json.dumps(state))
    e = epochs[-1]
    (run_dir / run_files.POINTER_FILE).write_text(json.dumps(
        {"epoch": e, "model": f"checkpoints/epoch-{e:04d}.keras", "state": f"checkpoints/epoch-{e:04d}.json"}))
    return ckpt


def torn(path):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)


DAMAGE = {  # name -> (damage, epoch resumed (None: refused), the damaged file named)
    "pointer bad json": (lambda d, c: (d / "checkpoint.json").write_text('{"epoch": 2, "mod'), 2, "checkpoint.json"),
    "pointer missing keys": (lambda d, c: (d / "checkpoint.json").write_text('{"epoch": 2}'), 2, "checkpoint.json"),
    "pointer not an object": (lambda d, c: (d / "checkpoint.json").write_text('[1, 2]'), 2, "checkpoint.json"),
    "pointer outside": (lambda d, c: (d / "checkpoint.json").write_text(
        '{"epoch": 2, "model": "/etc/passwd", "state": "../x.json"}'), 2, "outside"),
    "pointer missing": (lambda d, c: (d / "checkpoint.json").unlink(), 2, "checkpoint.json is missing"),
    "pointer wrong epoch": (lambda d, c: (d / "checkpoint.json").write_text(json.dumps(
        {"epoch": 7, "model": "checkpoints/epoch-0002.keras", "state": "checkpoints/epoch-0002.json"})), 2, "epoch 7"),
    "model missing": (lambda d, c: (c / "epoch-0002.keras").unlink(), 1, "epoch-0002.keras does not exist"),
    "model torn": (lambda d, c: torn(c / "epoch-0002.keras"), 1, "epoch-0002.keras is not a whole"),
    "state bad json": (lambda d, c: (c / "epoch-0002.json").write_text("{"), 1, "epoch-0002.json"),
    "state epoch a string": (lambda d, c: (c / "epoch-0002.json").write_text(json.dumps(
        {"epoch": "2", "history": [], "callbacks": {}})), 1, "'epoch' must be a positive integer"),
    "state history short": (lambda d, c: (c / "epoch-0002.json").write_text(json.dumps(
        {"epoch": 2, "history": [{"epoch": 1}], "callbacks": {}})), 1, "expected 1..2"),
    "state plateau wrong type": (lambda d, c: (c / "epoch-0002.json").write_text(json.dumps(
        {"epoch": 2, "history": [{"epoch": 1}, {"epoch": 2}], "callbacks": {"plateau": {"best": "x", "wait": 0,
                                                                                         "reductions": 0}}})),
        1, "plateau.best"),
    "state missing key": (lambda d, c: (c / "epoch-0002.json").write_text('{"epoch": 2}'), 1, "lacks the key"),
    "state recoveries wrong type": (lambda d, c: (c / "epoch-0002.json").write_text(json.dumps(
        {"epoch": 2, "history": [{"epoch": 1}, {"epoch": 2}], "callbacks": {"divergence": {"recoveries": None}}})),
        1, "divergence.recoveries"),
    "everything": (lambda d, c: [torn(c / "epoch-0002.keras"), (c / "epoch-0001.json").write_text("{")], None,
                   "epoch-0002.keras"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_state_falls_back_or_refuses_naming_the_file(tmp_path, kind):
    damage, expected, named = DAMAGE[kind]
    ckpt = make_state(tmp_path)
    damage(tmp_path, ckpt)
    if expected is None:
        with pytest.raises(run_files.DamagedStateError, match="no complete checkpoint is left") as info:
            training_state.find_training_state(tmp_path)
        assert named in str(info.value) and "--output-dir" in str(info.value)
        return
    state, notes = training_state.find_training_state(tmp_path)
    assert state.epoch == expected and state.model_path == ckpt / f"epoch-{expected:04d}.keras"
    assert any(named in n for n in notes), notes
    assert any(f"resuming from the newest complete checkpoint instead: {state.model_path}" in n for n in notes)


def test_a_new_run_and_a_good_state_have_no_notes(tmp_path):
    assert training_state.find_training_state(tmp_path) == (None, [])
    make_state(tmp_path)
    state, notes = training_state.find_training_state(tmp_path)
    assert state.epoch == 2 and notes == [] and state.callbacks["plateau"]["wait"] == 0


def test_damaged_state_through_train_py_never_a_traceback(tmp_path, tiny_data):
    """train.py's main on damaged state: a message and status 2, or a fallback; never an
    exception (`train_cli.main` fails the test on one)."""
    run_dir = tmp_path / "run"
    args = flags(tiny_data, run_dir, 2)
    code, out, err = train_cli.main(args)
    assert code == 0, err[-3000:]
    saved = tmp_path / "saved"
    shutil.copytree(run_dir, saved)

    def fresh():
        shutil.rmtree(run_dir)
        shutil.copytree(saved, run_dir)

    (run_dir / run_files.POINTER_FILE).write_text('{"epoch": 2, "mod')  # a torn pointer
    code, out, err = train_cli.main(args)
    assert code == 0, err[-3000:]
    assert "checkpoint.json" in out and "resuming from the newest complete checkpoint" in out
    assert f"Resuming {run_dir} after epoch 2" in out

    fresh()
    (run_dir / run_files.CHECKPOINTS_DIR / "epoch-0002.json").write_text('{"epoch": 2, "history": 5, "callbacks": {}}')
    code, out, err = train_cli.main(args)
    assert code == 2 and "epoch-0002.json" in err and "--output-dir" in err

    fresh()
    torn(run_dir / run_files.CHECKPOINTS_DIR / "epoch-0002.keras")
    code, out, err = train_cli.main(args)
    assert code == 2 and "epoch-0002.keras" in err

    fresh()
    (run_dir / run_files.CONFIG_FILE).write_text('{"recipe": ')
    code, out, err = train_cli.main(args)
    assert code == 2 and "config.json" in err and "damaged" in err


# Decompression bombs -------------------------------------------------------------------


def bomb_jpeg(path, side=30_000):
    """A real 40x50 JPEG whose SOF0 header says ``side x side`` (decoding it would
    allocate side * side * 3 bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(buf, "JPEG")
    raw = bytearray(buf.getvalue())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5:sof + 9] = side.to_bytes(2, "big") * 2
    Path(path).write_bytes(bytes(raw))
    return path


def test_header_sizes_of_every_format_without_decoding(tmp_path):
    import tensorflow as tf
    from PIL import Image

    image = Image.fromarray(np.zeros((40, 50, 3), np.uint8))
    for fmt in ("JPEG", "PNG", "GIF", "BMP"):
        buf = io.BytesIO()
        image.save(buf, fmt)
        encoded = tf.constant(buf.getvalue())
        assert list(images.image_size(encoded).numpy()) == [40, 50], fmt
        mapped = tf.data.Dataset.from_tensors(encoded).map(images.image_size)  # inside tf.data
        assert [list(s) for s in mapped.as_numpy_iterator()] == [[40, 50]], fmt
    bomb = tf.constant(bomb_jpeg(tmp_path / "bomb.jpg").read_bytes())
    assert list(tf.io.extract_jpeg_shape(bomb).numpy()) == [30_000, 30_000, 3]
    with pytest.raises(tf.errors.InvalidArgumentError, match="MAX_IMAGE_PIXELS"):
        images.decode_image(bomb)  # refused from the header: nothing of 2.7 GB is allocated
    assert images.MAX_IMAGE_PIXELS == 89_478_485


def test_bomb_in_a_folder_is_skipped_and_counted(tmp_path):
    root = synthetic.make_dataset(tmp_path / "d", num_classes=2, train_per_class=3, val_per_class=1, size=48)
    bomb_jpeg(root / "train" / "disc" / "zz_bomb.jpg")
    source = datasets.load_source(root, "train")
    assert source.num_examples == 7
    counter = data.SkipCounter()
    ds = data.training_dataset(source, 4, mean="none", crop_size=40, resize_size=44, pca_stddev=0.0,
                               seed=0, counter=counter)
    images = sum(int(x.shape[0]) for x, _ in ds)
    assert (images, counter.skipped, counter.images) == (6, 1, 6)
