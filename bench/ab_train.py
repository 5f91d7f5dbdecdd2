"""A/B of keras_alexnet variants in ONE process, alternating training steps.

    python bench/ab_train.py towers:tf towers:matmul [--precision fp32] [--rounds 6]

On a shared, noisy machine, separate processes see different background load; here each
variant's model is built in the same process and the variants take turns, one training
step each, for ``--rounds`` rounds, so every variant sees the same load on average. The
per-step median (wall and process CPU seconds) is reported. A variant is
``grouping:lrn[:option=value...]`` with grouping in towers/grouped/none and lrn in
tf (the library layer) / off / a bench/fast_lrn.py implementation; options: ``xla=1``,
``spe=N`` (steps_per_execution; the step time is then divided by N).

This is a tool for bench/NOTES.md, not part of bench_train.py's published numbers.
"""

import argparse
import os
import resource
import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fast_lrn  # noqa: E402
from _keras_worker import synthetic_batch  # noqa: E402


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def install_dispatching_lrn():
    """Lets each LRN layer pick its implementation through a `_bench_impl` attribute."""
    from keras_alexnet.layers import LocalResponseNormalization

    original = LocalResponseNormalization.call

    def call(self, inputs):
        impl = getattr(self, "_bench_impl", "tf")
        if impl == "tf":
            return original(self, inputs)
        return fast_lrn.call_with(impl, self, inputs)

    LocalResponseNormalization.call = call
    return LocalResponseNormalization


def build(spec, lrn_class, batch):
    import keras_alexnet

    grouping, lrn, *opts = spec.split(":")
    opts = dict(o.split("=") for o in opts)
    model = keras_alexnet.AlexNet(grouping=grouping, lrn=lrn != "off", seed=0)
    for layer in model._flatten_layers():
        if isinstance(layer, lrn_class):
            layer._bench_impl = lrn
    spe = int(opts.get("spe", 1))
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        jit_compile=bool(int(opts.get("xla", 0))),
        steps_per_execution=spe,
    )
    x, y = synthetic_batch(batch)
    ds = tf.data.Dataset.from_tensors((tf.constant(x), tf.constant(y))).repeat()
    iterator = iter(ds)
    model.make_train_function()

    def step():
        # The same call `fit` makes: the compiled train function on a data iterator.
        out = model.train_function(iterator)
        if hasattr(out, "get_value"):  # an Optional of the logs
            out = out.get_value()
        float(tf.nest.flatten(out)[0])  # waits for the step to finish

    return step, spe


def main():
    p = argparse.ArgumentParser()
    p.add_argument("variants", nargs="+")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    if args.precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    lrn_class = install_dispatching_lrn()
    steps = {v: build(v, lrn_class, args.batch) for v in args.variants}
    for v, (step, _) in steps.items():
        for _ in range(args.warmup):
            step()
    wall = {v: [] for v in steps}
    cpu = {v: [] for v in steps}
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for v in order:
            step, spe = steps[v]
            t, c = time.perf_counter(), cpu_seconds()
            step()
            wall[v].append((time.perf_counter() - t) / spe)
            cpu[v].append((cpu_seconds() - c) / spe)
    print(f"{args.precision}, batch {args.batch}, {args.rounds} alternating rounds "
          f"(median per step; img/s = batch / median wall)")
    base = None
    for v in steps:
        w, c = statistics.median(wall[v]), statistics.median(cpu[v])
        base = base or w
        print(f"  {v:<28} wall {w:6.2f} s  cpu {c:6.2f} s  {args.batch / w:6.1f} img/s  "
              f"speed-up {base / w:4.2f}x   walls {np.round(wall[v], 2).tolist()}")


if __name__ == "__main__":
    main()
