"""What the hardware decides about a run, without changing what it computes: the
mixed-precision policy, whether to compile with XLA, and the `tf.distribute` strategy.

`keras_alexnet.training.train` resolves ``--precision auto`` and ``--xla auto`` here;
``train.py`` creates the strategy first (`make_strategy`), before TensorFlow runs any op.
On JAX and PyTorch the GPUs are the backend's, asked through the backend, and TensorFlow
(the input pipeline) is kept off them.
"""

import contextlib
import json
import os
from pathlib import Path

from keras_alexnet import console
from keras_alexnet.backends import backend, on_tensorflow, require_tensorflow


# Precision -----------------------------------------------------------------------------


def choose_precision(cpu_flags=None, gpu_capabilities=None):
    """The fastest mixed-precision policy for the hardware, without changing the network.

    bfloat16 pays only where the hardware computes it: on CPUs with AMX-BF16 or
    AVX512_BF16, and on GPUs of compute capability 8.0 or later; GPUs from 7.0 get
    float16 (with loss scaling). Elsewhere bf16 is emulated: on this project's AVX-512
    machines without those flags bf16 trained 3.5x *slower* than float32 (bench/NOTES.md).
    On a bf16 CPU the backend matters too (bench/bench_backends.py, AVX512_BF16, batch
    32): bf16 trained faster than float32 on TensorFlow and PyTorch, slower on JAX, whose
    CPU convolutions do not use those instructions; JAX on such a CPU stays in float32.

    Args:
        cpu_flags: set of /proc/cpuinfo flags (read from the machine if None).
        gpu_capabilities: list of (major, minor) of the visible GPUs (queried if None).

    Returns:
        ``"mixed_bfloat16"``, ``"mixed_float16"`` or ``"float32"``.
    """
    if gpu_capabilities is None:
        gpu_capabilities = _gpu_capabilities()
    if gpu_capabilities:
        lowest = min(gpu_capabilities)
        return "mixed_bfloat16" if lowest >= (8, 0) else "mixed_float16" if lowest >= (7, 0) else "float32"
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    fast = BF16_CPU_FLAGS & set(cpu_flags) and backend() in BF16_CPU_BACKENDS
    return "mixed_bfloat16" if fast else "float32"


BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}
BF16_CPU_BACKENDS = {"tensorflow", "torch"}  # see choose_precision


def _gpu_capabilities():
    """(major, minor) compute capability of each GPU the Keras backend sees."""
    if backend() == "jax":
        import jax

        return [tuple(int(p) for p in str(d.compute_capability).split(".")[:2])
                for d in jax.devices() if d.platform == "gpu" and getattr(d, "compute_capability", None)]
    if backend() == "torch":
        import torch

        return [tuple(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]
    tf = console.quiet_tensorflow()
    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if cc:
            caps.append(tuple(cc))
    return caps


def _cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def choose_xla(precision, grouping="towers", cpu_flags=None, num_gpus=None):
    """Whether XLA makes the training step faster, without changing what it computes.

    On JAX always: XLA is how JAX compiles, and without it Keras runs the step op by op
    (the tiny preset's first step took 7 s so). On PyTorch never: there ``jit_compile``
    means ``torch.compile``, not measured here. On TensorFlow:

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
    if not on_tensorflow():
        return backend() == "jax"
    if precision != "mixed_bfloat16" or grouping == "grouped":
        return False
    if num_gpus is None:
        num_gpus = len(_gpu_capabilities())
    if num_gpus:
        return False
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    return not (BF16_CPU_FLAGS & set(cpu_flags))


# Distribution --------------------------------------------------------------------------


class OneDevice:
    """The strategy of a run on JAX or PyTorch: one device, the backend's default."""

    cluster_resolver = None

    def scope(self):
        return contextlib.nullcontext()


def make_strategy(kind="auto"):
    """The `tf.distribute` strategy for ``kind``.

    ``"auto"``: `MultiWorkerMirroredStrategy` when ``TF_CONFIG`` names a cluster of more
    than one worker, `MirroredStrategy` with several GPUs, else the default strategy.
    ``"mirrored"``, ``"multi-worker"``, ``"default"`` force one.

    On JAX and PyTorch: `OneDevice` for ``"auto"`` and ``"default"`` (TensorFlow, which
    runs the input pipeline, is kept off the GPUs, whose memory it would otherwise
    take); the `tf.distribute` kinds raise `keras_alexnet.backends.NeedsTensorFlow`.
    """
    if not on_tensorflow():
        if kind not in ("auto", "default"):
            require_tensorflow("tf.distribute")
        try:
            console.quiet_tensorflow().config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow has started its devices already: too late, harmless on CPUs
            pass
        return OneDevice()
    tf = console.quiet_tensorflow()
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
