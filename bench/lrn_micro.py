"""Micro-benchmark of LRN implementations: forward + gradient at AlexNet's batch-128 shapes.

    python bench/lrn_micro.py [--reps 5] [--dtype fp32|bf16]

Times ``tf.nn.local_response_normalization`` (what keras_alexnet's layer calls) against
the banded-matmul prototypes of bench/fast_lrn.py, inside `tf.function`, interleaved
(round robin over implementations, median of ``--reps``). Shapes: one tower's LRN1 input
(128x55x55x48) and LRN2 input (128x27x27x128); the training step of the two-tower model
runs each twice.
"""

import argparse
import statistics
import time

import tensorflow as tf

import fast_lrn


def reference(x, groups=1):
    parts = tf.split(x, groups, axis=-1) if groups > 1 else [x]
    x_dtype = x.dtype
    parts = [
        tf.nn.local_response_normalization(tf.cast(p, tf.float32), 2, 2.0, 1e-4, 0.75)
        for p in parts
    ]
    y = tf.concat(parts, -1) if groups > 1 else parts[0]
    return tf.cast(y, x_dtype)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args()
    dtype = tf.float32 if args.dtype == "fp32" else tf.bfloat16
    impls = {"tf.nn.lrn": reference, **fast_lrn.IMPLEMENTATIONS}
    for shape in ((128, 55, 55, 48), (128, 27, 27, 128)):
        x = tf.cast(tf.random.stateless_uniform(shape, (0, 1), 0, 40), dtype)
        g = tf.cast(tf.random.stateless_normal(shape, (0, 2)), dtype)
        fns = {}
        for name, fn in impls.items():

            @tf.function
            def step(x, g, fn=fn):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = fn(x)
                return tape.gradient(y, x, output_gradients=g)

            @tf.function
            def fwd(x, fn=fn):
                return fn(x)

            step(x, g).numpy()
            fwd(x).numpy()
            fns[name] = (fwd, step)
        times = {name: ([], []) for name in fns}
        for _ in range(args.reps):
            for name, (fwd, step) in fns.items():
                t = time.perf_counter()
                fwd(x).numpy()
                times[name][0].append(time.perf_counter() - t)
                t = time.perf_counter()
                step(x, g).numpy()
                times[name][1].append(time.perf_counter() - t)
        print(f"shape {shape} {args.dtype}: median ms (forward / forward+gradient)")
        for name, (f, s) in times.items():
            print(f"  {name:<18} {1e3 * statistics.median(f):8.1f} {1e3 * statistics.median(s):8.1f}")


if __name__ == "__main__":
    main()
