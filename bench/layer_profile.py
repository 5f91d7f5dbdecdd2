"""Where a keras_alexnet training step spends its time: each layer alone, batch 128.

    python bench/layer_profile.py [--precision fp32|bf16] [--reps 3] [--lrn tf|matmul]

For every layer of the two-tower model (one tower's layer: the step runs each tower
layer twice), times the forward pass and forward + gradients (input and weights; conv1:
weights only, as in the training step) inside
`tf.function`, on inputs of the shape the layer sees in AlexNet(227x227, batch 128).
Under ``--precision bf16`` the Keras ``mixed_bfloat16`` policy is on and inputs are
bfloat16, as inside the mixed-precision model. Medians of ``--reps``.
"""

import argparse
import os
import statistics
import sys
import time

import keras
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lrn", default="tf")
    p.add_argument("--only", default="")
    args = p.parse_args()
    if args.precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    from keras_alexnet.layers import LocalResponseNormalization

    if args.lrn != "tf":
        import fast_lrn

        fast_lrn.patch(LocalResponseNormalization, args.lrn)
    dtype = tf.bfloat16 if args.precision == "bf16" else tf.float32
    b = args.batch
    conv = keras.layers.Conv2D
    layers = [  # (name, layer, input shape without batch, count per step)
        ("conv1 (one tower)", conv(48, 11, strides=4, activation="relu"), (227, 227, 3), 2),
        ("lrn1", LocalResponseNormalization(), (55, 55, 48), 2),
        ("pool1", keras.layers.MaxPooling2D(3, 2), (55, 55, 48), 2),
        ("conv2", conv(128, 5, padding="same", activation="relu"), (27, 27, 48), 2),
        ("lrn2", LocalResponseNormalization(), (27, 27, 128), 2),
        ("pool2", keras.layers.MaxPooling2D(3, 2), (27, 27, 128), 2),
        ("conv3", conv(192, 3, padding="same", activation="relu"), (13, 13, 256), 2),
        ("conv4", conv(192, 3, padding="same", activation="relu"), (13, 13, 192), 2),
        ("conv5", conv(128, 3, padding="same", activation="relu"), (13, 13, 192), 2),
        ("pool5", keras.layers.MaxPooling2D(3, 2), (13, 13, 128), 2),
        ("fc6", keras.layers.Dense(4096, activation="relu"), (9216,), 1),
        ("fc7", keras.layers.Dense(4096, activation="relu"), (4096,), 1),
        ("fc8", keras.layers.Dense(1000), (4096,), 1),
    ]
    only = [s for s in args.only.split(",") if s]
    total_f = total_s = 0.0
    print(f"{args.precision}, batch {b}, lrn={args.lrn}: median ms per call "
          "(forward / forward+backward), x count per training step")
    for name, layer, shape, count in layers:
        if only and name.split()[0] not in only:
            continue
        x = tf.cast(tf.random.stateless_uniform((b,) + shape, (0, 1), 0, 10), dtype)
        layer.build(x.shape)

        @tf.function
        def fwd(x):
            return layer(x)

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(tf.cast(y, tf.float32))
            # conv1's input is the data: the training step needs no gradient for it.
            wrt = [w.value for w in layer.trainable_weights]
            return tape.gradient(loss, wrt if name.startswith("conv1") else [x] + wrt)

        fwd(x)
        [g.numpy() for g in step(x)]
        tf_, ts_ = [], []
        for _ in range(args.reps):
            t = time.perf_counter()
            fwd(x).numpy()
            tf_.append(time.perf_counter() - t)
            t = time.perf_counter()
            [g.numpy() for g in step(x)]
            ts_.append(time.perf_counter() - t)
        f, s = 1e3 * statistics.median(tf_), 1e3 * statistics.median(ts_)
        total_f += count * f
        total_s += count * s
        print(f"  {name:<18} {f:9.1f} {s:9.1f}  x{count}", flush=True)
    print(f"  {'sum over a step':<18} {total_f:9.1f} {total_s:9.1f}")


if __name__ == "__main__":
    main()
