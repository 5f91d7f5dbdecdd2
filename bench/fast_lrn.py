"""Prototype: local response normalisation as a banded matmul with a hand-written gradient.

The paper's LRN (§3.3), ``b_i = a_i / (k + alpha * sum_{|j-i|<=r} a_j^2) ** beta``, sums the
squares of ``2r+1`` neighbouring channels: that sum is the product of the squared
activations (rows = pixels, columns = channels) with a fixed banded 0/1 matrix ``B``
(``B[j, i] = 1`` when ``|i - j| <= r`` and i, j are in the same channel group). With
groups, ``B`` is block diagonal, so one matmul normalises every tower on its own.

Why it is faster than ``tf.nn.local_response_normalization`` on CPU (bench/NOTES.md):
TensorFlow's forward LRN kernel already contracts with a band matrix (Eigen), but raises
to the power -beta with ``exp(log(.) * -beta)``, and its gradient kernel (``LRNGrad``) is a
scalar triple loop that calls ``pow`` once per (pixel, channel, neighbour). Here:

- forward: ``s = (x*x) @ B`` (a matmul oneDNN runs at full speed), ``d = k + alpha*s``,
  ``r = d ** -beta`` (for beta=0.75 as ``rsqrt(d) * sqrt(rsqrt(d))``: no exp/log),
  ``y = x * r``;
- backward (``B`` is symmetric): ``dx = g*r - 2*alpha*beta * x * ((g*x*r/d) @ B)``,
  i.e. one more matmul and a few element-wise passes, no ``pow``.

Computed in float32 for any input dtype (bfloat16 in, bfloat16 out), like the library
layer, so it equals ``tf.nn.local_response_normalization`` to float32 round-off.

`patch(LocalResponseNormalization, name)` swaps the library layer's ``call`` in the
calling process only: `_keras_worker.py` does, for the candidate rows of
``bench_train.py --candidates`` (``lrn="matmul_autodiff"``, ``"matmul_xla"``). `lrn` was
adopted: it is now `keras_alexnet.layers.local_response_normalization` (the library's
default LRN), imported here so that the variants keep their names.
"""

import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The adopted implementation and its helpers live in the library now; the variants below
# reuse them.
from keras_alexnet.layers import _band_matrix, _band_product, _neg_pow  # noqa: E402
from keras_alexnet.layers import local_response_normalization as lrn  # noqa: E402


def band_matrix(channels, depth_radius, groups=1, dtype=tf.float32):
    """The (channels, channels) 0/1 window matrix as a tensor (see `_band_matrix`)."""
    return tf.constant(_band_matrix(channels, depth_radius, groups), dtype=dtype)


def lrn_autodiff(x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75, groups=1):
    """The same forward as `lrn`, with TensorFlow's automatic gradient (for comparison)."""
    dtype = x.dtype
    band = band_matrix(x.shape[-1], depth_radius, groups)
    x32 = tf.cast(x, tf.float32) if dtype != tf.float32 else x
    d = bias + alpha * _band_product(tf.square(x32), band)
    y = x32 * _neg_pow(d, beta)
    return tf.cast(y, dtype) if dtype != tf.float32 else y


def lrn_xla(x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75, groups=1):
    """`lrn` with its forward and its gradient each compiled by XLA (fused element-wise)."""
    dtype = x.dtype
    band = band_matrix(x.shape[-1], depth_radius, groups)
    alpha, beta, bias = float(alpha), float(beta), float(bias)

    @tf.function(jit_compile=True)
    def forward(x):
        x32 = tf.cast(x, tf.float32)
        d = bias + alpha * _band_product(tf.square(x32), band)
        return tf.cast(x32 * _neg_pow(d, beta), dtype), d

    @tf.function(jit_compile=True)
    def backward(g, x, d):
        x32 = tf.cast(x, tf.float32)
        gr = tf.cast(g, tf.float32) * _neg_pow(d, beta)
        t = _band_product(gr * x32 / d, band)
        return tf.cast(gr - (2.0 * alpha * beta) * x32 * t, dtype)

    @tf.custom_gradient
    def _lrn(x):
        y, d = forward(x)
        return y, lambda g: backward(g, x, d)

    return _lrn(x)


IMPLEMENTATIONS = {"matmul": lrn, "matmul_autodiff": lrn_autodiff, "matmul_xla": lrn_xla}


def call_with(name, layer, inputs):
    """Runs the implementation ``name`` with the parameters of the LRN ``layer``."""
    return IMPLEMENTATIONS[name](
        tf.convert_to_tensor(inputs),
        depth_radius=layer.depth_radius,
        bias=layer.bias,
        alpha=layer.alpha,
        beta=layer.beta,
        groups=layer.groups,
    )


def patch(layer_class, name):
    """Replaces ``layer_class.call`` by the implementation ``name`` (this process only)."""
    IMPLEMENTATIONS[name]  # fail now on an unknown name

    def call(self, inputs):
        return call_with(name, self, inputs)

    layer_class.call = call


if __name__ == "__main__":
    # Equality check against tf.nn.local_response_normalization (values and gradients).
    rng = np.random.RandomState(0)
    for groups, shape in ((1, (4, 9, 9, 48)), (2, (4, 9, 9, 96)), (2, (2, 5, 5, 256))):
        x = tf.constant(rng.normal(0, 30, shape).astype("float32"))
        w = tf.constant(rng.normal(0, 1, shape).astype("float32"))

        def ref(x):
            parts = tf.split(x, groups, axis=-1)
            return tf.concat(
                [tf.nn.local_response_normalization(p, 2, 2.0, 1e-4, 0.75) for p in parts], -1
            )

        for name, fn in [("tf", ref)] + [
            (n, lambda x, f=f: f(x, groups=groups)) for n, f in IMPLEMENTATIONS.items()
        ]:
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fn(x)
                loss = tf.reduce_sum(y * w)
            g = tape.gradient(loss, x)
            if name == "tf":
                y0, g0 = y, g
                continue
            dy = float(tf.reduce_max(tf.abs(y - y0)) / tf.reduce_max(tf.abs(y0)))
            dg = float(tf.reduce_max(tf.abs(g - g0)) / tf.reduce_max(tf.abs(g0)))
            print(f"groups={groups} {shape} {name}: rel max err y {dy:.1e}, grad {dg:.1e}")
            assert dy < 1e-5 and dg < 1e-5
    # bfloat16 in, bfloat16 out: equal to the library layer's float32 round trip up to
    # bfloat16 rounding of the output.
    x = tf.cast(tf.constant(rng.normal(0, 30, (4, 9, 9, 96)).astype("float32")), tf.bfloat16)
    ref = tf.cast(tf.concat([tf.nn.local_response_normalization(
        tf.cast(p, tf.float32), 2, 2.0, 1e-4, 0.75) for p in tf.split(x, 2, -1)], -1), tf.bfloat16)
    y = lrn(x, groups=2)
    diff = tf.abs(tf.cast(y, tf.float32) - tf.cast(ref, tf.float32))
    ulp = tf.abs(tf.cast(ref, tf.float32)) * 2.0**-7
    print(f"bf16: dtype {y.dtype.name}, max diff / bf16 ulp {float(tf.reduce_max(diff / (ulp + 1e-30))):.2f}")
    assert y.dtype == tf.bfloat16 and bool(tf.reduce_all(diff <= ulp))
    print("OK")
