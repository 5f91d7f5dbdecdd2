"""Prototype: conv1 (11x11, stride 4, 3 input channels) as a 3x3 stride-1 convolution on a
space-to-depth(4) image. Same weights, same function, different kernel shape for oneDNN.

A stride-4 convolution over 3 channels uses the CPU's vector units poorly (3 input
channels, large stride). Cutting the image into 4x4 blocks (`tf.nn.space_to_depth`) turns
it into a 57x57 image of 48 channels; conv1's 11x11 kernel, zero-padded to 12x12, is then
a 3x3 kernel over those blocks at stride 1: ``K2[by, bx, (dy*4 + dx)*3 + c, o] =
K[4*by + dy, 4*bx + dx, c, o]``. The output is the same 55x55 map; 19% more multiply-adds
(the zero 12th row and column), on a much better-shaped problem.

`SpaceToDepthConv2D` keeps the ordinary (11, 11, 3, filters) kernel, so its weights are
interchangeable with `keras.layers.Conv2D`'s and the gradient reaches that kernel through
the rearrangement. ``python bench/conv1_s2d.py`` checks equality with Conv2D and times
both (forward, and forward + kernel gradient: conv1's input needs no gradient).
"""

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf


class SpaceToDepthConv2D(keras.layers.Layer):
    """An (11, 11) stride-4 "valid" Conv2D computed as a 3x3 conv on space_to_depth(4)."""

    def __init__(self, filters, kernel_size=11, strides=4, activation=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(np.broadcast_to(kernel_size, (2,))[0])
        self.strides = int(np.broadcast_to(strides, (2,))[0])
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        k, c = self.kernel_size, input_shape[-1]
        self.kernel = self.add_weight(name="kernel", shape=(k, k, c, self.filters),
                                      initializer=self.kernel_initializer,
                                      regularizer=self.kernel_regularizer)
        self.bias = self.add_weight(name="bias", shape=(self.filters,),
                                    initializer=self.bias_initializer)

    def _blocked_kernel(self, dtype):
        s, k = self.strides, self.kernel_size
        nb = -(-k // s)  # blocks per kernel side: ceil(11 / 4) = 3
        kern = tf.cast(self.kernel, dtype)
        kern = tf.pad(kern, [[0, nb * s - k], [0, nb * s - k], [0, 0], [0, 0]])
        c = kern.shape[2]
        # (by, dy, bx, dx, c, o) -> (by, bx, dy, dx, c, o) -> (by, bx, dy*s*c + dx*c + c, o)
        kern = tf.reshape(kern, (nb, s, nb, s, c, self.filters))
        kern = tf.transpose(kern, (0, 2, 1, 3, 4, 5))
        return tf.reshape(kern, (nb, nb, s * s * c, self.filters))

    def call(self, inputs):
        s, k = self.strides, self.kernel_size
        x = tf.convert_to_tensor(inputs)
        h, w = x.shape[1], x.shape[2]
        out_h, out_w = (h - k) // s + 1, (w - k) // s + 1
        nb = -(-k // s)
        # Pad so the blocked image holds every block the output needs.
        ph, pw = (out_h - 1 + nb) * s - h, (out_w - 1 + nb) * s - w
        x = tf.pad(x, [[0, 0], [0, max(ph, 0)], [0, max(pw, 0)], [0, 0]])
        x = x[:, : (out_h - 1 + nb) * s, : (out_w - 1 + nb) * s, :]
        x = tf.nn.space_to_depth(x, s)
        y = tf.nn.conv2d(x, self._blocked_kernel(x.dtype), strides=1, padding="VALID")
        y = tf.nn.bias_add(y, tf.cast(self.bias, y.dtype))
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        s, k = self.strides, self.kernel_size
        return (input_shape[0], (input_shape[1] - k) // s + 1,
                (input_shape[2] - k) // s + 1, self.filters)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--filters", type=int, default=48)
    args = p.parse_args()
    rng = np.random.RandomState(0)
    x_small = tf.constant(rng.uniform(-120, 135, (2, 227, 227, 3)).astype("float32"))
    ref = keras.layers.Conv2D(args.filters, 11, strides=4, activation="relu")
    new = SpaceToDepthConv2D(args.filters, activation="relu")
    ref.build(x_small.shape)
    new.build(x_small.shape)
    new.set_weights([w + rng.normal(0, 0.01, w.shape).astype("float32") * 0
                     for w in ref.get_weights()])
    ref.set_weights([rng.normal(0, 0.01, w.shape).astype("float32") for w in ref.get_weights()])
    new.set_weights(ref.get_weights())
    y0, y1 = ref(x_small), new(x_small)
    err = float(tf.reduce_max(tf.abs(y0 - y1)) / tf.reduce_max(tf.abs(y0)))
    print(f"output {tuple(y1.shape)}, relative max error vs Conv2D {err:.1e}")
    assert y0.shape == y1.shape and err < 1e-5

    x = tf.constant(rng.uniform(-120, 135, (args.batch, 227, 227, 3)).astype("float32"))
    fns = {}
    for name, layer in (("Conv2D 11x11/4", ref), ("space-to-depth 3x3/1", new)):
        @tf.function
        def fwd(x, layer=layer):
            return layer(x)

        @tf.function
        def step(x, layer=layer):
            with tf.GradientTape() as tape:
                y = layer(x)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, layer.trainable_weights)

        fwd(x)
        step(x)
        fns[name] = (fwd, step)
    times = {n: ([], []) for n in fns}
    for _ in range(args.reps):
        for n, (fwd, step) in fns.items():
            t = time.perf_counter()
            fwd(x).numpy()
            times[n][0].append(time.perf_counter() - t)
            t = time.perf_counter()
            [g.numpy() for g in step(x)]
            times[n][1].append(time.perf_counter() - t)
    print(f"batch {args.batch}, {args.filters} filters: median ms (forward / forward+kernel grad)")
    for n, (f, s) in times.items():
        print(f"  {n:<22} {1e3 * statistics.median(f):8.1f} {1e3 * statistics.median(s):8.1f}")


if __name__ == "__main__":
    main()
