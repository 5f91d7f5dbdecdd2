"""Input workers on a tf.data service (`keras_alexnet.data_service`, ``train.py
--data-service``): a dispatcher in this process and two workers started as their own
processes (``python -m keras_alexnet.data_service worker``) on 127.0.0.1, as on input
machines. Every training image has its own class, so the labels of a pass say which images
it delivered. A worker killed mid-pass stalls the pass in TensorFlow 2.21
(keras_alexnet/data_service.py): the test of it watches the pass from a thread, and train.py
from its own process, which its watchdog ends."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from keras_alexnet import data, data_service, datasets, run_files

REPO = Path(__file__).resolve().parents[1]
IMAGES = 400


def draw_folder(root, images):
    """``images`` training images and as many validation ones, each its own class."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(images):
            d = root / split / f"c{c:03d}"
            d.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(d / "x.png")
    return root


def start_service(workers=2):
    """A dispatcher here (it drops a worker silent for 1.5 s) and worker processes."""
    dispatcher = data_service.start_dispatcher(worker_timeout_ms=1500)
    address = dispatcher.target.split("://")[1]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen([sys.executable, "-m", "keras_alexnet.data_service", "worker", "--dispatcher",
                               address, "--heartbeat-interval-ms", "200"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(workers)]
    for w in procs:  # registered once it says so; then a heartbeat or two
        assert "worker for" in w.stdout.readline()
    time.sleep(1.0)
    return dispatcher, procs


def one_pass(ds):
    """The labels of one pass over ``ds``."""
    return [label for _, batch in ds for label in batch.numpy().tolist()]


def test_every_image_once_per_pass_and_a_killed_worker_neither_hangs_nor_loses_the_run(tmp_path):
    """Two workers: each pass delivers every image once. Then one is killed (SIGKILL) during
    epoch 2 of train.py, which finishes, or exits with status 5 after --data-service-timeout
    with its saved epochs whole and then resumes, as after a crash, through a new dispatcher
    and a replacement worker. Then the last worker is killed as a pass starts: the pass
    delivers part of the images, each at most once, and then waits (a distributed epoch never
    delivers an image twice; the dead worker's unsent images are lost to that pass)."""
    folder = draw_folder(tmp_path / "data", IMAGES)
    source = datasets.load_source(folder, "train")
    dispatcher, workers = start_service()
    doomed, survivor = workers
    try:
        ds = data.training_dataset(source, 4, crop_size=67, resize_size=76, seed=0, pca_stddev=0.0,
                                   data_service=dispatcher.target)
        for _ in range(2):  # each pass is a new job over the two workers
            assert sorted(one_pass(ds)) == list(range(IMAGES))

        run = tmp_path / "run"
        flags = ["--data-dir", str(folder), "--data-service", dispatcher.target, "--preset", "tiny", "--epochs", "2",
                 "--batch-size", "8", "--precision", "float32", "--fc-units", "16", "--output-dir", str(run),
                 "--quiet", "--data-service-timeout", "8"]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.Popen([sys.executable, "train.py", *flags], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        while not (run / run_files.POINTER_FILE).exists() and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(1.0)  # into epoch 2's pass (about 2.5 s, the last), while the doomed worker holds images of it
        doomed.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        out, err = proc.communicate(timeout=120)
        assert time.monotonic() - killed < 60  # ended by itself: the timeout, the pass's tail, the exit
        # TensorFlow 2.21 went on without a stall in every run killed this far into a pass
        # (the surviving worker served the rest); a worker killed as a pass starts stalls it
        # (below), and then train.py's watchdog ends the run, resumable.
        assert proc.returncode in (0, 5), err[-3000:]
        if proc.returncode == 5:
            assert "no training batch from the tf.data service" in err and str(run) in err, err[-3000:]
            # whole epochs; the one that stalled is not saved
            assert list(run_files.read_metrics(run)["epoch"]) == [1]
            # Resumed as after a crash: a new dispatcher with a replacement worker (the old
            # dispatcher may still hold the stalled job on the survivor), the same other flags. A
            # process of its own: the watchdog ends its process (os._exit), not pytest's.
            dispatcher, (survivor,) = start_service(1)
            workers.append(survivor)
            flags[flags.index("--data-service") + 1] = dispatcher.target
            resumed = subprocess.run([sys.executable, "train.py", *flags], cwd=REPO, capture_output=True,
                                     text=True, env=env, timeout=120)
            assert resumed.returncode == 0, resumed.stderr[-3000:]
            out, err = resumed.stdout, resumed.stderr
            assert "Resuming" in out
        assert "Traceback" not in err
        metrics = run_files.read_metrics(run)
        assert list(metrics["epoch"]) == [1, 2] and np.isfinite(metrics["loss"]).all()

        # A pass whose worker dies as it starts (the survivor, now the only one, at its 8th image).
        ds = data.training_dataset(source, 2, crop_size=67, resize_size=76, seed=0, pca_stddev=0.0,
                                   data_service=dispatcher.target)
        labels = []

        def consume():  # the pass never ends: its thread is left waiting (a daemon, gone with the process)
            for _, batch in ds:
                labels.extend(batch.numpy().tolist())

        threading.Thread(target=consume, daemon=True).start()
        deadline = time.monotonic() + 60
        while len(labels) < 8:
            assert time.monotonic() < deadline, "the pass did not start"
            time.sleep(0.01)
        survivor.send_signal(signal.SIGKILL)
        seen = -1
        while len(labels) != seen:  # until nothing came for 2 s
            seen = len(labels)
            time.sleep(2.0)
        assert 8 <= len(labels) < IMAGES and len(set(labels)) == len(labels), len(labels)
    finally:
        for w in workers:
            w.kill()
            w.wait()


def test_the_input_watchdog_fires_on_a_stalled_input_and_not_during_validation():
    """A training input that stops for longer than the timeout calls on_stall once (train.py:
    a message and exit status 5); a slow validation does not."""
    import keras
    import tensorflow as tf

    from keras_alexnet import callbacks

    def slow(i, pause):
        def wait(x):
            time.sleep(pause)
            return x
        return tf.data.Dataset.range(6).map(lambda x: tf.ensure_shape(
            tf.py_function(lambda y: wait(y) if int(y) == i else y, [x], tf.int64), []))

    def xy(ds):
        return ds.map(lambda x: (tf.fill([1], tf.cast(x, tf.float32)), tf.cast(x % 2, tf.float32))).batch(1)

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    for train_stall, val_stall, fires in ((2.0, 0.0, 1), (0.0, 2.0, 0)):
        stalls = []
        dog = callbacks.InputWatchdog(1.0, "stalled for {seconds} s", on_stall=lambda: stalls.append(1),
                                      poll_s=0.05)
        model.fit(xy(slow(3, train_stall)), validation_data=xy(slow(1, val_stall)), epochs=1, verbose=0,
                  callbacks=[dog])
        assert len(stalls) == fires, (train_stall, val_stall, stalls)
