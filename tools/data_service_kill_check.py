"""By hand (not in the suite: it takes about 40 s): a tf.data service worker killed while
train.py trains through it. train.py must neither hang nor lose the run: it exits with status
5 after --data-service-timeout, and the same command resumes and finishes.

    python tools/data_service_kill_check.py

Starts a dispatcher here and two worker processes on 127.0.0.1, draws 40 small images (one
class each) in a temporary folder, runs train.py for 3 epochs, kills one worker once the
first epoch is saved, and prints what happened.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from keras_alexnet import data_service  # noqa: E402
disp = data_service.start_dispatcher(worker_timeout_ms=1500)
addr = disp.target.split("://")[1]
env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
ws = [subprocess.Popen([sys.executable, "-m", "keras_alexnet.data_service", "worker", "--dispatcher", addr, "--heartbeat-interval-ms", "200"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
for w in ws:
    w.stdout.readline()
time.sleep(1)
work = Path(tempfile.mkdtemp(prefix="service_kill_"))
rng = np.random.default_rng(0)
for split in ("train", "val"):
    for c in range(40):
        (work / "data" / split / f"c{c:02d}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(work / "data" / split / f"c{c:02d}" / "x.png")
run = work / "run"
cmd = [sys.executable, "train.py", "--data-dir", str(work / "data"), "--data-service", disp.target, "--preset", "tiny", "--epochs", "3",
       "--batch-size", "2", "--precision", "float32", "--output-dir", str(run), "--quiet", "--data-service-timeout", "10"]
t = time.time()
p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
while not (run / "checkpoint.json").exists() and p.poll() is None:
    time.sleep(0.05)
ws[1].send_signal(signal.SIGKILL)
print(f"killed a worker at {time.time()-t:.1f}s (after epoch 1's checkpoint)", flush=True)
out, err = p.communicate(timeout=200)
print("rc", p.returncode, f"after {time.time()-t:.1f}s", "| stderr:", err.strip().splitlines()[-1][:300] if err.strip() else "")
p2 = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
print("resume rc", p2.returncode, [l for l in p2.stdout.splitlines() if "Resuming" in l or "Validation after" in l][:2])
for w in ws:
    w.kill()
shutil.rmtree(work, ignore_errors=True)
