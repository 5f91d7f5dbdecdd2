"""What the hardware decides about a run, without changing what it computes: the
mixed-precision policy, whether to compile with XLA, and the `tf.distribute` strategy.

`keras_alexnet.training.train` resolves ``--precision auto`` and ``--xla auto`` here;
``train.py`` creates the strategy first (`make_strategy`), before TensorFlow runs any op.
"""

import json
import os
from pathlib import Path

import tensorflow as tf


# Precision -----------------------------------------------------------------------------


def choose_precision(cpu_flags=None, gpu_capabilities=None):
    """The fastest mixed-precision policy for the hardware, without changing the network.

    bfloat16 pays only where the hardware computes it: on CPUs with AMX-BF16 or
    AVX512_BF16, and on GPUs of compute capability 8.0 or later; GPUs from 7.0 get
    float16 (with loss scaling). Elsewhere bf16 is emulated: on this project's AVX-512
    machines without those flags bf16 trained 3.5x *slower* than float32 (bench/NOTES.md).

    Args:
        cpu_flags: set of /proc/cpuinfo flags (read from the machine if None).
        gpu_capabilities: list of (major, minor) of the visible GPUs (queried if None).

    Returns:
        ``"mixed_bfloat16"``, ``"mixed_float16"`` or ``"float32"``.
    """
    if gpu_capabilities is None:
        gpu_capabilities = []
        for gpu in tf.config.list_physical_devices("GPU"):
            cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
            if cc:
                gpu_capabilities.append(tuple(cc))
    if gpu_capabilities:
        lowest = min(gpu_capabilities)
        return "mixed_bfloat16" if lowest >= (8, 0) else "mixed_float16" if lowest >= (7, 0) else "float32"
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    return "mixed_bfloat16" if BF16_CPU_FLAGS & set(cpu_flags) else "float32"


BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}


def _cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def choose_xla(precision, grouping="towers", cpu_flags=None, num_gpus=None):
    """Whether XLA makes the training step faster, without changing what it computes.

    Measured on CPU (bench/NOTES.md): in float32 XLA is slower than TensorFlow's oneDNN
    kernels (32 vs 37 img/s); in bfloat16 on a CPU *without* bf16 instructions it is more
    than twice as fast (27 vs 12 img/s), because XLA's bf16 convolutions beat oneDNN's
    bf16 emulation. With the grouped layout XLA is always slow (its grouped-conv filter
    gradient, 6-7 img/s). On GPUs and on CPUs with AMX/AVX512_BF16 nothing was measured
    here, so XLA stays off.

    Args:
        precision: the resolved policy name (``"float32"``, ``"mixed_bfloat16"``, ...).
        grouping: the model layout.
        cpu_flags: set of /proc/cpuinfo flags (read from the machine if None).
        num_gpus: number of visible GPUs (queried if None).
    """
    if precision != "mixed_bfloat16" or grouping == "grouped":
        return False
    if num_gpus is None:
        num_gpus = len(tf.config.list_physical_devices("GPU"))
    if num_gpus:
        return False
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    return not (BF16_CPU_FLAGS & set(cpu_flags))


# Distribution --------------------------------------------------------------------------


def make_strategy(kind="auto"):
    """The `tf.distribute` strategy for ``kind``.

    ``"auto"``: `MultiWorkerMirroredStrategy` when ``TF_CONFIG`` names a cluster of more
    than one worker, `MirroredStrategy` with several GPUs, else the default strategy.
    ``"mirrored"``, ``"multi-worker"``, ``"default"`` force one.
    """
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    workers = tf_config.get("cluster", {}).get("worker", [])
    if kind == "auto":
        if len(workers) > 1:
            kind = "multi-worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {kind!r}")


def worker_info(strategy):
    """``(num_workers, worker_index, is_chief)`` of this process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 1, 0, True
    num = resolver.cluster_spec().num_tasks("worker")
    index = resolver.task_id or 0
    return num, index, index == 0
