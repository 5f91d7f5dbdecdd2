"""One timing run of keras_alexnet on one Keras backend, in its own process
(started by bench_backends.py).

    KERAS_BACKEND=jax python bench/_backend_worker.py '{"kind": "train", "grouping": "towers"}'

Prints one line ``RESULT {...json...}`` on stdout. The backend is Keras' own choice,
``KERAS_BACKEND`` (it cannot change once Keras is imported, hence one process per run).

Why a worker apart from _keras_worker.py: that one feeds ``model.fit`` from ``tf.data``
and so imports TensorFlow whatever the backend. This one imports only ``keras``,
``numpy`` and ``keras_alexnet.model`` (plus the backend's own framework), so it runs
unchanged on a GPU machine that has JAX or PyTorch and no TensorFlow. Whether TensorFlow
got imported anyway is checked at the end and reported as ``tensorflow_imported``. (For
the same reason it never calls ``keras.utils.set_random_seed``: that imports TensorFlow
whenever it is installed. ``AlexNet(seed=0)`` fixes the initial weights.)

Config keys (all optional):

- ``kind``: ``"train"`` (training images/s of ``AlexNet``, any backend) or ``"lrn"``
  (forward + backward time of the LRN layer: autodiff against a hand-written gradient;
  JAX and PyTorch backends).
- ``grouping``: ``"towers"`` or ``"grouped"``, passed to ``AlexNet``.
- ``precision``: ``"fp32"`` or ``"bf16"`` (Keras' ``mixed_bfloat16`` policy).
- ``jit``: ``compile(jit_compile=...)``: ``"auto"`` (Keras decides: XLA on JAX, eager
  on PyTorch, XLA on TensorFlow only with a GPU), ``true`` or ``false``; the resolved
  value is reported as ``jit_compile``.
- ``input``: ``"tensor"`` (default: the batch converted once to a tensor of the backend,
  on its device) or ``"numpy"`` (NumPy arrays handed to every call: a host-to-device copy
  per step on a GPU).
- ``batch``; ``warmup`` untimed ``train_on_batch`` calls (at least one: the first call
  traces and compiles, reported as ``compile_and_first_step_s``); then timed calls until
  ``steps`` are done, or earlier once ``min_steps`` are done and ``max_seconds`` have
  passed.
- ``lrn_number`` calls per timed repeat, ``lrn_repeats`` repeats, ``lrn_warmup`` untimed
  calls (kind ``"lrn"``).

Input: the synthetic batch of _keras_worker.py (NumPy seed 0, NHWC), the same images
every benchmark worker trains on.
"""

import importlib.metadata
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # keras_alexnet from this checkout, installed or not
sys.path.insert(0, HERE)  # _common
from _common import cpu_seconds, peak_rss_mib, synthetic_batch  # noqa: E402

DEFAULTS = dict(
    kind="train",
    grouping="towers",
    precision="fp32",
    jit="auto",
    input="tensor",
    batch=32,
    warmup=2,
    steps=10,
    min_steps=3,
    max_seconds=20.0,
    classes=1000,
    lrn_warmup=3,
    lrn_number=10,
    lrn_repeats=7,
)

# The paper's LRN constants (§3.3) and the two LRN layers' inputs (NHWC, without the
# batch): lrn1 after conv1 (96 maps), lrn2 after conv2 (256 maps, normalised per tower
# in the grouped layout: groups=2).
LRN_CONSTANTS = dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
LRN_SHAPES = (("lrn1", (55, 55, 96), 1), ("lrn2", (27, 27, 256), 2))
LRN_RTOL = 1e-5


def package_versions():
    """Installed versions, read from the distributions' metadata: importing TensorFlow
    just to ask its version is what this worker must not do."""
    out = {"python": sys.version.split()[0]}
    for name in ("keras", "numpy", "jax", "jaxlib", "torch", "tensorflow"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_description(backend):
    """What the backend computes on (``"cpu"`` or the GPU's name), asked of the backend's
    own framework only (already imported by Keras)."""
    try:
        if backend == "jax":
            import jax

            d = jax.devices()[0]
            return "cpu" if d.platform == "cpu" else f"{d.platform}: {d.device_kind}"
        if backend == "torch":
            import torch

            return f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if not gpus:
                return "cpu"
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"gpu: {details.get('device_name', gpus[0].name)}"
    except Exception as e:  # a description, never a reason to fail the run
        return f"unknown ({type(e).__name__}: {e})"
    return "unknown"


def _sync(backend):
    """Waits for the queued GPU work of PyTorch (JAX results are waited on with
    ``block_until_ready``; on the CPU both are synchronous or nearly)."""
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


# ---------------------------------------------------------------------------- train


def run_train(cfg):
    """Times ``model.train_on_batch`` on one in-memory batch.

    ``train_on_batch`` rather than ``fit``: ``fit`` on a NumPy array goes through Keras'
    data adapters, which differ between backends (and may use tf.data); one call per
    step on the same batch times the training step itself on every backend alike. The
    returned loss is read as a float after every call, so a step has finished (also on a
    GPU, where the call only queues work) when its time is taken.
    """
    import keras

    from keras_alexnet.model import AlexNet

    backend = keras.backend.backend()
    if cfg["precision"] == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    elif cfg["precision"] != "fp32":
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {cfg['precision']!r}")

    t0 = time.perf_counter()
    model = AlexNet(grouping=cfg["grouping"], classes=cfg["classes"], seed=0)
    build_s = time.perf_counter() - t0
    params = int(model.count_params())
    x, y = synthetic_batch(cfg["batch"], classes=cfg["classes"])
    if cfg["input"] == "tensor":
        # Once, on the backend's device: NumPy arrays would be copied to a GPU every step
        # (20 MB at batch 32, a large share of an AlexNet step on a fast GPU), timing the
        # copy as much as the step. PyTorch's worker likewise makes its tensors once.
        x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    elif cfg["input"] != "numpy":
        raise ValueError(f"input must be 'tensor' or 'numpy', got {cfg['input']!r}")

    t0 = time.perf_counter()
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        jit_compile=cfg["jit"],
    )
    loss = float(model.train_on_batch(x, y))  # tracing / compilation + the first step
    first_s = time.perf_counter() - t0
    for _ in range(max(0, int(cfg["warmup"]) - 1)):
        loss = float(model.train_on_batch(x, y))

    step_s, cpu0, start = [], cpu_seconds(), time.perf_counter()
    last = start
    while len(step_s) < cfg["steps"]:
        loss = float(model.train_on_batch(x, y))
        now = time.perf_counter()
        step_s.append(now - last)
        last = now
        if len(step_s) >= cfg["min_steps"] and now - start >= cfg["max_seconds"]:
            break
    elapsed = last - start
    cpu_used = cpu_seconds() - cpu0
    return dict(
        backend=backend,
        device=device_description(backend),
        kind="train",
        grouping=cfg["grouping"],
        precision=cfg["precision"],
        batch=cfg["batch"],
        jit=cfg["jit"],
        jit_compile=model.jit_compile,
        input=cfg["input"],
        params=params,
        train_images_per_s=cfg["batch"] * len(step_s) / elapsed,
        step_s=[round(s, 4) for s in step_s],
        timed_steps=len(step_s),
        build_s=round(build_s, 2),
        compile_and_first_step_s=round(first_s, 2),
        cpu_s=round(cpu_used, 2),
        cpu_s_per_step=round(cpu_used / len(step_s), 3),
        last_loss=loss,
    )


# ------------------------------------------------------------------------------ lrn


def lrn_autodiff(x, depth_radius, bias, alpha, beta, groups=1):
    """The alternative to the library's LRN, kept here for the comparison: the same
    banded-matmul forward, ``d = k + (x*x) @ (alpha*B)``, ``y = x * d ** -beta``, without
    ``keras.ops.custom_gradient``, so its gradient is the backend's autodiff. (The library's
    `keras_alexnet.layers.local_response_normalization_ops` has the hand-written gradient
    ``dx = g*r - 2*alpha*beta * x * ((g*r*x/d) @ B)`` of its TensorFlow path.)"""
    import keras
    from keras import ops

    from keras_alexnet.layers import _band_matrix, _neg_pow

    dtype = keras.backend.standardize_dtype(x.dtype)
    band = ops.convert_to_tensor(_band_matrix(x.shape[-1], depth_radius, groups) * float(alpha))
    x32 = ops.cast(x, "float32")
    d = ops.matmul(ops.square(x32), band) + float(bias)
    return ops.cast(x32 * _neg_pow(d, float(beta)), dtype)


def _lrn_inputs(batch, hwc, seed):
    """Post-ReLU-like activations, large enough (std 20) that ``alpha * sum(x*x)`` is
    comparable to ``k`` and both terms of the gradient matter; and the fixed weights
    ``w`` of the scalar ``sum(lrn(x) * w)`` (so the upstream gradient is not all ones)."""
    import numpy as np

    rng = np.random.RandomState(seed)
    x = np.maximum(rng.normal(0.0, 20.0, (batch,) + hwc), 0.0).astype("float32")
    w = rng.normal(0.0, 1.0, (batch,) + hwc).astype("float32")
    return x, w


def _assert_close(name, got, want):
    """``got`` equals ``want`` to ``LRN_RTOL`` relative to the largest value of ``want``
    (element-wise relative error means nothing where ReLU zeros make values tiny);
    returns that relative error."""
    import numpy as np

    got, want = np.asarray(got, "float64"), np.asarray(want, "float64")
    scale = float(np.max(np.abs(want))) or 1.0
    err = float(np.max(np.abs(got - want))) / scale
    if not err <= LRN_RTOL:
        raise AssertionError(f"{name}: custom and autodiff differ by {err:.3g} (relative), over {LRN_RTOL}")
    return err


def _lrn_jax(fns, x_np, w_np, cfg):
    """Checks then times ``jax.jit(jax.grad(sum(f(x) * w)))`` for each ``fns`` entry."""
    import jax
    import jax.numpy as jnp

    x, w = jnp.asarray(x_np), jnp.asarray(w_np)
    # w is an argument, not a closed-over constant, so XLA does not fold a large array
    # into the compiled program; jax.grad differentiates with respect to x (argument 0).
    losses = {k: (lambda f: lambda v, w: jnp.sum(f(v) * w))(f) for k, f in fns.items()}
    # The check at full float32 matmul precision: on a GPU JAX's default may be TF32,
    # whose round-off would hide (or fake) a difference between the two gradients.
    with jax.default_matmul_precision("float32"):
        check = {k: (jax.jit(fns[k])(x), jax.jit(jax.grad(losses[k]))(x, w)) for k in fns}
    grads = {k: jax.jit(jax.grad(loss)) for k, loss in losses.items()}

    def call(k):
        return grads[k](x, w)

    def wait(out):
        out.block_until_ready()

    return check, call, wait


def _lrn_torch(fns, x_np, w_np, cfg):
    """Checks then times ``sum(f(x) * w).backward()`` (eager) for each ``fns`` entry."""
    import torch
    from keras import ops

    x = ops.convert_to_tensor(x_np)  # on Keras' device (the GPU when there is one)
    w = ops.convert_to_tensor(w_np)

    def grad_of(k):
        xr = x.detach().requires_grad_(True)
        y = fns[k](xr)
        torch.sum(y * w).backward()
        return y.detach(), xr.grad

    check = {k: tuple(t.cpu().numpy() for t in grad_of(k)) for k in fns}
    xr = x.detach().requires_grad_(True)

    def call(k):
        xr.grad = None
        torch.sum(fns[k](xr) * w).backward()
        return xr.grad

    def wait(out):
        _sync("torch")

    return check, call, wait


def run_lrn(cfg):
    """Forward + backward of the LRN: the library's `local_response_normalization_ops`
    (hand-written gradient, ``keras.ops.custom_gradient``) against `lrn_autodiff`, on the
    shapes of the paper's lrn1 and lrn2 at ``batch``.

    Each repeat times ``lrn_number`` calls back to back and waits for the last (so
    per-call synchronisation does not swamp a short GPU kernel); the two versions
    alternate within a repeat, so drifts of a shared machine hit both alike. Reported:
    the median over repeats of ms per call, every repeat's value, and custom / autodiff
    of the medians (below 1: the hand-written gradient is faster).
    """
    import keras

    from keras_alexnet.layers import local_response_normalization_ops

    backend = keras.backend.backend()
    if backend not in ("jax", "torch"):
        raise ValueError(f"kind 'lrn' runs on the jax and torch backends, not {backend!r} "
                         "(TensorFlow's layer already has the hand-written gradient)")
    prepare = _lrn_jax if backend == "jax" else _lrn_torch
    out, cpu0 = [], cpu_seconds()
    for i, (name, hwc, groups) in enumerate(LRN_SHAPES):
        consts = dict(LRN_CONSTANTS, groups=groups)
        fns = {
            "autodiff": lambda v, c=consts: lrn_autodiff(v, **c),
            "custom": lambda v, c=consts: local_response_normalization_ops(v, **c),
        }
        x_np, w_np = _lrn_inputs(cfg["batch"], hwc, seed=i + 1)
        check, call, wait = prepare(fns, x_np, w_np, cfg)
        errors = dict(
            output=_assert_close(f"{name} output", check["custom"][0], check["autodiff"][0]),
            gradient=_assert_close(f"{name} gradient", check["custom"][1], check["autodiff"][1]),
        )
        for _ in range(int(cfg["lrn_warmup"])):  # compilation (JAX), allocator warm-up
            for k in fns:
                wait(call(k))
        ms = {k: [] for k in fns}
        for _ in range(int(cfg["lrn_repeats"])):
            for k in fns:
                t = time.perf_counter()
                for _ in range(int(cfg["lrn_number"])):
                    result = call(k)
                wait(result)
                ms[k].append((time.perf_counter() - t) * 1e3 / int(cfg["lrn_number"]))
        med = {k: statistics.median(v) for k, v in ms.items()}
        out.append(dict(
            name=name,
            shape=[cfg["batch"], *hwc],
            groups=groups,
            autodiff_ms=round(med["autodiff"], 4),
            custom_ms=round(med["custom"], 4),
            custom_over_autodiff=round(med["custom"] / med["autodiff"], 4),
            autodiff_ms_runs=[round(v, 4) for v in ms["autodiff"]],
            custom_ms_runs=[round(v, 4) for v in ms["custom"]],
            max_relative_difference=errors,
        ))
    return dict(
        backend=backend,
        device=device_description(backend),
        kind="lrn",
        batch=cfg["batch"],
        constants=LRN_CONSTANTS,
        lrn=out,
        lrn_number=int(cfg["lrn_number"]),
        lrn_repeats=int(cfg["lrn_repeats"]),
        cpu_s=round(cpu_seconds() - cpu0, 2),
    )


def main():
    cfg = dict(DEFAULTS)
    if len(sys.argv) > 1:
        cfg.update(json.loads(sys.argv[1]))
    if cfg["kind"] == "train":
        result = run_train(cfg)
    elif cfg["kind"] == "lrn":
        result = run_lrn(cfg)
    else:
        raise ValueError(f"unknown kind {cfg['kind']!r} (train, lrn)")
    # Checked last: anything above (Keras, the library, the backend) that pulled
    # TensorFlow in shows here.
    result["tensorflow_imported"] = "tensorflow" in sys.modules
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    result["versions"] = package_versions()
    result["cpu_count"] = os.cpu_count()
    result["config"] = cfg
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
