"""A run killed again and again, at every kind of moment of an epoch and of its save, is
finished by the same command, with the schedule an uninterrupted run computes.
Each kill is a real process (tests/kill_worker.py); one killed-and-resumed run serves
every assertion."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_alexnet
import train_cli
from keras_alexnet import recipes, run_files, training_state
from tiny_train import REPO, env, finite_model, flags, leftovers, make_tiny_data, run_train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory)


# Killed, again and again, and resumed with the same command ------------------------------

KILL_EPOCHS = 5
# Each kill is one session of train.py (tests/kill_worker.py): (KILL_AT, the epoch that
# checkpoint.json names afterwards). Together they kill at every kind of moment of an
# epoch and of its save (`keras_alexnet.training_state.save_training_state`, in its order).
KILLS = [
    ("batch:2:1", 1),  # mid-epoch 2 (epoch 1 was saved)
    ("torn:epoch-0002.keras", 1),  # half of epoch 2's model file written
    ("replace:epoch-0002.json:1", 1),  # epoch 2's model written, its state not
    ("replace:last.keras:2", 2),  # epoch 2 saved; epoch 3's model and state written, last.keras not
    ("replace:checkpoint.json:1", 2),  # epoch 3's files all written, the pointer not
]


def kill_flags(tiny_data, run_dir):
    return flags(tiny_data, run_dir, KILL_EPOCHS, "--patience", "1")


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, tiny_data):
    """One run killed six times (the KILLS, then a SIGKILL from outside at whatever
    moment it lands), then finished by the same command. Every kill, resume and soak
    assertion reads it."""
    root = tmp_path_factory.mktemp("killed")
    run_dir = root / "run"
    args = kill_flags(tiny_data, run_dir)
    kills = []
    for kill_at, _ in KILLS:
        proc = run_train(args, "tests/kill_worker.py", KILL_AT=kill_at)
        assert proc.returncode == -signal.SIGKILL, (kill_at, proc.stderr[-3000:])
        stale_pid = (run_dir / run_files.LOCK_FILE).read_text().strip()
        state, notes = training_state.find_training_state(run_dir)
        kills.append(dict(kill_at=kill_at, stderr=proc.stderr, stale_pid=stale_pid, notes=notes,
                          epoch=state.epoch, loads=finite_model(state.model_path)))

    # A SIGKILL from outside, once the run has saved an epoch of this session: somewhere
    # in the next epoch or its save.
    before = kills[-1]["epoch"]
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while training_state.find_training_state(run_dir)[0].epoch == before:
        assert proc.poll() is None and time.time() < deadline, "the run ended before its next checkpoint"
        time.sleep(0.05)
    try:  # the lock of a live writer
        run_files.RunLock(run_dir).acquire()
        locked_while_alive = False
    except run_files.RunLockedError:
        locked_while_alive = True
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    external = dict(pid=proc.pid, returncode=proc.returncode, locked_while_alive=locked_while_alive,
                    epoch=training_state.find_training_state(run_dir)[0].epoch)

    code, out, err = train_cli.main(args)  # the same command, in this process
    return dict(run_dir=run_dir, kills=kills, external=external, final=(code, out, err))


@pytest.mark.slow
def test_every_kill_leaves_the_checkpoint_the_pointer_names_whole(killed_and_resumed):
    for (kill_at, expected), kill in zip(KILLS, killed_and_resumed["kills"]):
        assert "Traceback" not in kill["stderr"], (kill_at, kill["stderr"][-3000:])
        assert kill["notes"] == [], (kill_at, kill["notes"])  # a kill never damages the state
        assert kill["epoch"] == expected, kill_at
        assert kill["loads"], kill_at  # the model it names loads, and is finite


@pytest.mark.slow
def test_a_killed_writer_leaves_no_stale_lock(killed_and_resumed):
    """The OS drops a SIGKILLed process's lock: the next session (and this process) takes
    it, although the lock file still names the dead process."""
    external = killed_and_resumed["external"]
    assert external["returncode"] == -signal.SIGKILL and external["locked_while_alive"]
    run_dir = killed_and_resumed["run_dir"]
    assert all(k["stale_pid"].isdigit() for k in killed_and_resumed["kills"])
    assert len({k["stale_pid"] for k in killed_and_resumed["kills"]}) == len(KILLS)  # each session took it
    with run_files.lock_run(run_dir):
        pass


@pytest.mark.slow
def test_the_same_command_resumes_a_killed_run_and_finishes_it(killed_and_resumed):
    run_dir = killed_and_resumed["run_dir"]
    done = killed_and_resumed["external"]["epoch"]
    assert KILLS[-1][1] < done < KILL_EPOCHS  # the outside kill landed after a save, before the end
    code, out, err = killed_and_resumed["final"]
    assert code == 0, err[-3000:]
    assert f"Resuming {run_dir} after epoch {done}" in out
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert [int(float(r.split(",")[0])) for r in rows[1:]] == list(range(1, KILL_EPOCHS + 1))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == KILL_EPOCHS
    model = keras.models.load_model(run_dir / "last.keras")
    assert isinstance(model, keras_alexnet.AlexNetModel)
    assert keras.models.load_model(run_dir / "best.keras").count_params() == model.count_params()
    assert len(list((run_dir / "checkpoints").glob("epoch-*.keras"))) == 1
    config = json.loads((run_dir / "config.json").read_text())
    assert config["working_dir"] == os.getcwd()  # train.py ran in the test's directory
    assert config["recipe"]["epochs"] == KILL_EPOCHS and config["class_names"] == ["disc", "square", "triangle"]
    # The plateau state and learning rate came back too: the history is continuous.
    state = json.loads((run_dir / json.loads((run_dir / "checkpoint.json").read_text())["state"]).read_text())
    assert [r["epoch"] for r in state["history"]] == list(range(1, KILL_EPOCHS + 1))
    assert set(state["callbacks"]["plateau"]) == {"best", "wait", "reductions"}


def replay_plateau(val_errors, lr, patience, factor=0.1, max_reductions=3):
    """The rates and final state PlateauSchedule gives for these validation errors."""
    best, wait, reductions, rates = float("inf"), 0, 0, []
    for err in val_errors:
        rates.append(lr)
        if err < best:
            best, wait = err, 0
            continue
        wait += 1
        if wait >= patience and reductions < max_reductions:
            lr, reductions, wait = lr * factor, reductions + 1, 0
    return rates, {"best": best, "wait": wait, "reductions": reductions}


@pytest.mark.slow
def test_killed_run_schedule_is_what_an_uninterrupted_run_computes(killed_and_resumed):
    # replay_plateau transcribes the plateau rule from the validation errors alone: what an
    # uninterrupted run computes (the callback itself is checked against the rule in
    # tests/test_training.py::test_plateau_divides_by_ten_after_patience_epochs_at_most_three_times).
    for directory in (killed_and_resumed["run_dir"],):
        metrics = run_files.read_metrics(directory)
        assert list(metrics["epoch"]) == list(range(1, KILL_EPOCHS + 1)), directory
        assert finite_model(directory / run_files.BEST_MODEL) and finite_model(directory / run_files.LAST_MODEL)
        pointer = json.loads((directory / run_files.POINTER_FILE).read_text())
        saved = json.loads((directory / pointer["state"]).read_text())
        # The plateau state and every epoch's rate are what an uninterrupted run computes
        # from these validation errors (the errors themselves differ after a resume: the
        # data order is re-seeded per session, dropout draws anew).
        rates, plateau = replay_plateau(metrics["val_top1_error"], recipes.preset("tiny").learning_rate,
                                        patience=1)
        np.testing.assert_allclose(metrics["lr"], rates, rtol=1e-5)
        assert saved["callbacks"]["plateau"]["wait"] == plateau["wait"]
        assert saved["callbacks"]["plateau"]["reductions"] == plateau["reductions"]
        assert saved["callbacks"]["plateau"]["best"] == pytest.approx(plateau["best"])
        assert leftovers(directory) == []
