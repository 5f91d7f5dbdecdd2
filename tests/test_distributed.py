"""Data parallelism on tf.distribute: two workers on this machine train one model."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_alexnet  # registers the custom layers for loading
from keras_alexnet import run_files, synthetic

REPO = Path(__file__).resolve().parents[1]


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_together_and_end_with_identical_weights(tmp_path):
    data_dir = synthetic.make_dataset(tmp_path / "data", num_classes=3, train_per_class=8, val_per_class=4, size=64)
    # An undecodable file listed first: it is in worker 0's shard (every 2nd file from the
    # first), so only worker 0 may ever meet it.
    (data_dir / "train" / "disc" / "0000_broken.JPEG").write_bytes(b"not a jpeg")
    run_dir = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    flags = ["--data-dir", str(data_dir), "--output-dir", str(run_dir), "--strategy", "multi-worker",
             "--preset", "tiny", "--resize-size", "72", "--crop-size", "67", "--fc-units", "32",
             "--batch-size", "8", "--epochs", "1", "--quiet"]
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, str(REPO / "train.py"), *flags], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    chief = keras.models.load_model(run_dir / "last.keras")
    worker = keras.models.load_model(run_dir / "workers" / "1" / "last.keras")
    fresh = keras_alexnet.AlexNet(input_shape=(67, 67, 3), classes=3, fc_units=32, seed=0, weight_stddev="he",
                                  positive_bias=0.0)
    assert len(chief.get_weights()) == len(worker.get_weights())
    for a, b in zip(chief.get_weights(), worker.get_weights()):
        np.testing.assert_array_equal(a, b)
    # They trained: one epoch of ceil(ceil(25 files / 2 workers) / 4 per worker) = 4 steps,
    # a whole pass over each worker's shard.
    assert int(chief.optimizer.iterations.numpy()) == 4
    assert not np.allclose(chief.get_weights()[0], fresh.get_weights()[0])
    # Each worker read its own half of the data (sharded before decoding).
    config = json.loads((run_dir / "config.json").read_text())
    assert config["settings"]["strategy"] == "multi-worker"
    skipped = [run_files.read_metrics(d)["skipped_files"] for d in (run_dir, run_dir / "workers" / "1")]
    assert skipped[0].sum() >= 1 and skipped[1].sum() == 0  # worker 0 met it, worker 1 never
