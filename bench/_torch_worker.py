"""One timing run of a PyTorch peer in its own process (started by bench_train.py).

    python bench/_torch_worker.py '{"net": "paper", "precision": "bf16", "layout": "nchw"}'

Prints one line ``RESULT {...json...}``. Config keys (all optional):

- ``kind``: ``"train"`` (training images/s, then inference images/s) or ``"matmul"``.
- ``net``: ``"paper"`` (`torch_alexnet.PaperAlexNet`) or ``"torchvision"``.
- ``precision``: ``"fp32"`` or ``"bf16"`` (``torch.autocast("cpu", torch.bfloat16)``).
- ``layout``: ``"nchw"`` (PyTorch's default) or ``"cl"`` (``torch.channels_last``).
- ``threads``: ``torch.set_num_threads`` (default: the number of cores).
- ``batch``, ``warmup``, ``steps``, ``min_steps``, ``max_seconds``, ``infer_steps``,
  ``infer_min_steps``, ``infer_max_seconds``: as in _keras_worker.py.

The training step is the same as keras_alexnet's: SGD with momentum 0.9, learning rate
0.01, softmax cross-entropy, dropout on, on the same synthetic batch (NumPy seed 0).
TensorFlow is never imported here.
"""

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # torch_alexnet, _common
from _common import cpu_seconds, peak_rss_mib, synthetic_batch  # noqa: E402

DEFAULTS = dict(
    kind="train",
    net="paper",
    precision="fp32",
    layout="nchw",
    threads=0,
    batch=128,
    warmup=1,
    steps=5,
    min_steps=2,
    max_seconds=30.0,
    infer_steps=5,
    infer_min_steps=2,
    infer_max_seconds=10.0,
    matmul_n=4096,
    matmul_seconds=3.0,
    matmul_n_bf16=2048,
)


def nchw_batch(batch):
    """`_common.synthetic_batch` (NHWC, the Keras workers' input), transposed to NCHW."""
    import numpy as np

    x, y = synthetic_batch(batch)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y


def _rate(times, start, batch):
    return batch * len(times) / (times[-1] - start), [
        round(b - a, 4) for a, b in zip([start] + times[:-1], times)
    ]


def run_train(cfg):
    import contextlib

    import torch

    import torch_alexnet

    torch.manual_seed(0)
    model = torch_alexnet.build(cfg["net"])
    params = torch_alexnet.count_params(model)
    x, y = nchw_batch(cfg["batch"])
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    if cfg["layout"] == "cl":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    elif cfg["layout"] != "nchw":
        raise ValueError(f"layout must be 'nchw' or 'cl', got {cfg['layout']!r}")
    bf16 = cfg["precision"] == "bf16"

    def autocast():
        if bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    model.train()
    t0 = time.perf_counter()
    for i in range(max(1, cfg["warmup"])):
        train_step()
        if i == 0:
            first_call_s = time.perf_counter() - t0
    start, times, cpu0 = time.perf_counter(), [], cpu_seconds()
    while len(times) < cfg["steps"]:
        train_step()
        times.append(time.perf_counter())
        if len(times) >= cfg["min_steps"] and times[-1] - start > cfg["max_seconds"]:
            break
    train_cpu = (cpu_seconds() - cpu0) / len(times)
    train_ips, train_call_s = _rate(times, start, cfg["batch"])
    result = dict(
        params=params,
        train_ips=train_ips,
        train_cpu_s_per_step=round(train_cpu, 3),
        train_call_s=train_call_s,
        first_call_s=round(first_call_s, 2),
        peak_rss_mib_train=round(peak_rss_mib(), 1),
    )

    if cfg["infer_steps"] > 0:
        model.eval()
        with torch.inference_mode(), autocast():
            for _ in range(max(1, cfg["warmup"])):
                model(x).float().sum().item()
            start, times, cpu0 = time.perf_counter(), [], cpu_seconds()
            while len(times) < cfg["infer_steps"]:
                torch.softmax(model(x).float(), dim=-1).sum().item()
                times.append(time.perf_counter())
                if (
                    len(times) >= min(cfg["infer_min_steps"], cfg["infer_steps"])
                    and times[-1] - start > cfg["infer_max_seconds"]
                ):
                    break
            infer_cpu = (cpu_seconds() - cpu0) / len(times)
        infer_ips, infer_call_s = _rate(times, start, cfg["batch"])
        result.update(
            infer_ips=infer_ips,
            infer_call_s=infer_call_s,
            infer_cpu_s_per_step=round(infer_cpu, 3),
        )
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return result


def run_matmul(cfg):
    import torch

    # fp32 at matmul_n; bf16 at matmul_n_bf16 (smaller: without bf16 instructions a
    # bf16 matmul is emulated and ~10x slower, and the rate barely depends on the size).
    out = {}
    g = torch.Generator().manual_seed(0)
    for name, dtype, n in (("fp32", torch.float32, int(cfg["matmul_n"])),
                           ("bf16", torch.bfloat16, int(cfg["matmul_n_bf16"]))):
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        torch.mm(a, b)  # warm-up
        n_done, t = 0, time.perf_counter()
        while n_done < 2 or time.perf_counter() - t < cfg["matmul_seconds"]:
            torch.mm(a, b)
            n_done += 1
        seconds = (time.perf_counter() - t) / n_done
        out[f"matmul_gflops_{name}"] = 2.0 * n**3 / seconds / 1e9
    return out


def main():
    cfg = dict(DEFAULTS)
    if len(sys.argv) > 1:
        cfg.update(json.loads(sys.argv[1]))
    import torch

    threads = int(cfg["threads"]) or os.cpu_count()
    torch.set_num_threads(threads)
    cfg["threads"] = threads
    if cfg["kind"] == "train":
        result = run_train(cfg)
    elif cfg["kind"] == "matmul":
        result = run_matmul(cfg)
    else:
        raise ValueError(f"unknown kind {cfg['kind']!r}")
    result["config"] = cfg
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
