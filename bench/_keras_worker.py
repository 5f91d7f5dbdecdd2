"""One timing run of keras_alexnet in its own process (started by bench_train.py).

    python bench/_keras_worker.py '{"kind": "train", "precision": "bf16", ...}'

Prints one line ``RESULT {...json...}`` on stdout. Keys of the config (all optional):

- ``kind``: ``"train"`` (images/s of the training step, then images/s of inference with
  the same model), ``"matmul"`` (GFLOP/s of a large square matmul) or ``"e2e"``
  (training fed by ``keras_alexnet.data`` from JPEG files, when that module exists).
- ``precision``: ``"fp32"`` or ``"bf16"`` (Keras ``mixed_bfloat16`` policy).
- ``grouping``: ``"towers"`` or ``"grouped"`` (or ``"none"``), passed to `AlexNet`.
- ``xla``: ``compile(jit_compile=...)``; ``"auto"``: what the library picks on this machine
  (`keras_alexnet.hardware.choose_xla`), reported back as ``xla_resolved``.
- ``steps_per_execution``: passed to ``compile``.
- ``lrn``: ``"default"`` (the library's layer as shipped:
  ``lrn_implementation="matmul"``, the banded-matmul LRN), ``"tf_nn"``
  (``lrn_implementation="tf_nn"``, tf.nn.local_response_normalization) or ``"off"`` (no
  LRN: the cost of LRN).
- ``intra``, ``inter``: TensorFlow thread-pool sizes (0 = TensorFlow decides).
- ``xla_flags``: extra ``XLA_FLAGS`` for this process (e.g. ``--xla_cpu_use_onednn=true``).
- ``batch``; ``warmup`` untimed training steps; then at most ``steps`` timed steps,
  stopping early once ``min_steps`` are done and ``max_seconds`` have passed (so emulated
  bfloat16 on CPUs without bfloat16 instructions does not blow the time budget);
  ``infer_steps`` / ``infer_min_steps`` / ``infer_max_seconds`` likewise for inference.

Inputs are synthetic and the same in every worker (NumPy seed 0, see `_common.synthetic_batch`),
so the Keras and PyTorch workers time the same images.
"""

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # keras_alexnet from this checkout, installed or not
sys.path.insert(0, HERE)  # _common
from _common import cpu_seconds, peak_rss_mib, synthetic_batch  # noqa: E402

DEFAULTS = dict(
    kind="train",
    precision="fp32",
    grouping="towers",
    xla="auto",
    steps_per_execution=1,
    lrn="default",
    intra=0,
    inter=0,
    batch=128,
    warmup=2,
    steps=5,
    min_steps=2,
    max_seconds=30.0,
    infer_steps=5,
    infer_min_steps=2,
    infer_max_seconds=10.0,
    matmul_n=4096,
    matmul_seconds=3.0,
    matmul_n_bf16=2048,
    classes=1000,
)


def _timing_callback(warmup_calls, min_calls, max_calls, max_seconds):
    """A callback that records the time at the end of each call of the step function
    and stops the loop once enough timed calls are done (the loss is read, so the
    step has finished when the time is taken)."""
    import keras

    class Times(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []
            self.cpu = []

        def _end(self, batch, logs=None):
            if logs:
                value = next(iter(logs.values()))
                try:
                    float(value)
                except TypeError:
                    pass
            self.times.append(time.perf_counter())
            self.cpu.append(cpu_seconds())
            timed = self.times[warmup_calls - 1 :]  # the first entry is the start mark
            if len(timed) - 1 >= max_calls or (
                len(timed) - 1 >= min_calls and timed[-1] - timed[0] > max_seconds
            ):
                self.model.stop_training = True
                self.model.stop_predicting = True

        on_train_batch_end = _end
        on_predict_batch_end = _end

    return Times()


def _rate(times, start, batch, steps_per_call):
    """Images/s over the timed calls: from `start` (end of warm-up) to the last call."""
    n_calls = len(times)
    elapsed = times[-1] - start
    return batch * steps_per_call * n_calls / elapsed, [
        round(b - a, 4) for a, b in zip([start] + times[:-1], times)
    ]


def run_train(cfg, dataset=None):
    """Times training then inference. ``dataset``: None for the in-memory synthetic batch,
    or a `tf.data.Dataset` of (images, labels) batches (the e2e run)."""
    import keras
    import tensorflow as tf

    import keras_alexnet

    if cfg["lrn"] not in ("default", "tf_nn", "off"):
        raise ValueError(f"lrn must be 'default', 'tf_nn' or 'off', got {cfg['lrn']!r}.")
    if cfg["precision"] == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")

    keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    model = keras_alexnet.AlexNet(
        grouping=cfg["grouping"], lrn=cfg["lrn"] != "off", classes=cfg["classes"], seed=0,
        lrn_implementation="tf_nn" if cfg["lrn"] == "tf_nn" else "matmul",
    )
    params = int(model.count_params())
    if cfg["xla"] == "auto":
        from keras_alexnet.hardware import choose_xla

        policy = "mixed_bfloat16" if cfg["precision"] == "bf16" else "float32"
        cfg["xla_resolved"] = choose_xla(policy, cfg["grouping"])
    else:
        cfg["xla_resolved"] = bool(cfg["xla"])
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        jit_compile=cfg["xla_resolved"],
        steps_per_execution=int(cfg["steps_per_execution"]),
    )
    b, spe = cfg["batch"], int(cfg["steps_per_execution"])
    x, y = synthetic_batch(b, classes=cfg["classes"])
    if dataset is None:
        ds = tf.data.Dataset.from_tensors((tf.constant(x), tf.constant(y))).repeat()
    else:
        ds = dataset.repeat()

    # One fit: `warm` untimed calls (tracing, XLA compilation, oneDNN primitive
    # creation), then timed calls until enough steps are done (the callback stops it).
    warm = max(1, -(-cfg["warmup"] // spe))
    calls = max(1, -(-cfg["steps"] // spe))
    min_calls = max(1, -(-cfg["min_steps"] // spe))
    cb = _timing_callback(warm, min_calls, calls, cfg["max_seconds"])
    model.fit(ds, epochs=1, steps_per_epoch=(warm + calls) * spe, verbose=0, callbacks=[cb])
    first_call_s = cb.times[0] - t0
    start, times = cb.times[warm - 1], cb.times[warm:]
    train_ips, train_step_s = _rate(times, start, b, spe)
    train_cpu = (cb.cpu[-1] - cb.cpu[warm - 1]) / (len(times) * spe)
    rss_train = peak_rss_mib()
    result = dict(
        params=params,
        train_ips=train_ips,
        train_cpu_s_per_step=round(train_cpu, 3),
        train_call_s=train_step_s,
        first_call_s=round(first_call_s, 2),
        peak_rss_mib_train=round(rss_train, 1),
    )

    if cfg["infer_steps"] > 0:
        xs = tf.data.Dataset.from_tensors(tf.constant(x)).repeat()
        warm = max(1, -(-cfg["warmup"] // spe))
        calls = max(1, -(-cfg["infer_steps"] // spe))
        min_infer = max(1, -(-cfg["infer_min_steps"] // spe))
        pcb = _timing_callback(warm, min(min_infer, calls), calls, cfg["infer_max_seconds"])
        model.predict(xs, steps=(warm + calls) * spe, verbose=0, callbacks=[pcb])
        infer_ips, infer_step_s = _rate(pcb.times[warm:], pcb.times[warm - 1], b, spe)
        infer_cpu = (pcb.cpu[-1] - pcb.cpu[warm - 1]) / ((len(pcb.times) - warm) * spe)
        result.update(
            infer_ips=infer_ips,
            infer_call_s=infer_step_s,
            infer_cpu_s_per_step=round(infer_cpu, 3),
        )
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return result


def run_matmul(cfg):
    import tensorflow as tf

    # fp32 at matmul_n; bf16 at matmul_n_bf16 (smaller: without bf16 instructions a
    # bf16 matmul is emulated and ~10x slower, and the rate barely depends on the size).
    out = {}
    for name, dtype, n in (("fp32", tf.float32, int(cfg["matmul_n"])),
                           ("bf16", tf.bfloat16, int(cfg["matmul_n_bf16"]))):
        a = tf.random.stateless_normal((n, n), seed=(1, 2), dtype=tf.float32)
        b = tf.random.stateless_normal((n, n), seed=(3, 4), dtype=tf.float32)
        a, b = tf.cast(a, dtype), tf.cast(b, dtype)
        tf.linalg.matmul(a, b).numpy()  # warm-up
        n_done, t = 0, time.perf_counter()
        while n_done < 2 or time.perf_counter() - t < cfg["matmul_seconds"]:
            tf.linalg.matmul(a, b).numpy()
            n_done += 1
        seconds = (time.perf_counter() - t) / n_done
        out[f"matmul_gflops_{name}"] = 2.0 * n**3 / seconds / 1e9
    return out


E2E_DATA = os.path.join(HERE, "..", "..", "shared", "data", "imagenette")


def run_e2e(cfg):
    """Training fed by the real input pipeline, `keras_alexnet.data` (JPEG decode, resize,
    random crop, flip, PCA colour noise) over ``e2e_data`` (default: Imagenette under
    ../shared/data), batch 128; inference is then timed on the synthetic batch."""
    try:
        from keras_alexnet import data, sources
    except ImportError as e:
        return dict(skipped=f"keras_alexnet.data not importable: {e}")
    root = cfg.get("e2e_data") or E2E_DATA
    try:
        source = sources.folder_source(root, "train", class_index="imagenet")
        ds = data.training_dataset(source, cfg["batch"], seed=0, drop_remainder=True)
    except Exception as e:  # the module is young: report, do not crash the benchmark
        return dict(skipped=f"keras_alexnet.data API: {type(e).__name__}: {e}")
    result = run_train(cfg, dataset=ds)
    result["e2e_data"] = os.path.abspath(root)
    return result


def main():
    cfg = dict(DEFAULTS)
    if len(sys.argv) > 1:
        cfg.update(json.loads(sys.argv[1]))
    if cfg.get("xla_flags"):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + cfg["xla_flags"]).strip()
    import tensorflow as tf

    if cfg["intra"]:
        tf.config.threading.set_intra_op_parallelism_threads(int(cfg["intra"]))
    if cfg["inter"]:
        tf.config.threading.set_inter_op_parallelism_threads(int(cfg["inter"]))
    kind = cfg["kind"]
    if kind == "train":
        result = run_train(cfg)
    elif kind == "matmul":
        result = run_matmul(cfg)
    elif kind == "e2e":
        result = run_e2e(cfg)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    result["config"] = cfg
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
