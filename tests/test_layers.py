"""The paper's custom layers against independent NumPy transcriptions of the paper."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from keras_alexnet.layers import (
    IMAGENET_EIGENVALUES,
    IMAGENET_EIGENVECTORS,
    LocalResponseNormalization,
    PCAColorAugmentation,
)


def lrn_reference(a, n=5, k=2.0, alpha=1e-4, beta=0.75):
    """Paper §3.3, transcribed: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta."""
    a = np.asarray(a, dtype=np.float64)
    N = a.shape[-1]
    b = np.empty_like(a)
    for i in range(N):
        lo, hi = max(0, i - n // 2), min(N - 1, i + n // 2)
        s = np.sum(a[..., lo : hi + 1] ** 2, axis=-1)
        b[..., i] = a[..., i] / (k + alpha * s) ** beta
    return b


IMPLEMENTATIONS = pytest.mark.parametrize("implementation", ["matmul", "tf_nn"])


@IMPLEMENTATIONS
@pytest.mark.parametrize(
    "params",
    [
        dict(),  # the paper
        dict(depth_radius=2, bias=2.0, alpha=2e-5, beta=0.75),  # Krizhevsky's code
        dict(depth_radius=2, bias=1.0, alpha=2e-5, beta=0.75),  # Caffe bvlc_alexnet
        dict(depth_radius=1, bias=0.5, alpha=1e-2, beta=0.5),
    ],
)
def test_lrn_equals_paper_formula(params, implementation):
    rng = np.random.default_rng(0)
    # Large activations so the alpha term matters (ReLU outputs of conv1 reach ~100s).
    a = rng.uniform(0, 60, size=(2, 5, 6, 16)).astype(np.float32)
    layer = LocalResponseNormalization(**params, implementation=implementation)
    n = 2 * layer.depth_radius + 1
    expected = lrn_reference(a, n=n, k=layer.bias, alpha=layer.alpha, beta=layer.beta)
    got = np.asarray(layer(a), dtype=np.float64)
    assert np.max(np.abs(got - expected) / np.abs(expected).clip(1e-6)) < 1e-5
    # The normalisation is not negligible here: a test of the identity would fail.
    assert np.max(np.abs(expected - a) / a.clip(1e-6)) > 0.05


@IMPLEMENTATIONS
def test_lrn_groups_normalise_each_half_alone(implementation):
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 60, size=(1, 3, 3, 12)).astype(np.float32)
    got = np.asarray(LocalResponseNormalization(groups=2, implementation=implementation)(a))
    expected = np.concatenate([lrn_reference(a[..., :6]), lrn_reference(a[..., 6:])], axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # ... which differs from one window across all 12 channels at the boundary.
    assert not np.allclose(expected, lrn_reference(a), rtol=1e-5)


@IMPLEMENTATIONS
@pytest.mark.parametrize("groups", [1, 2])
def test_lrn_gradient_matches_finite_differences(implementation, groups):
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 60, size=(1, 2, 2, 8))
    w = rng.normal(size=a.shape)  # a random projection so every output matters
    x = tf.constant(a, tf.float32)
    layer = LocalResponseNormalization(alpha=1e-3, groups=groups, implementation=implementation)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * w)
    analytic = tape.gradient(loss, x).numpy()
    # Central differences of the float64 NumPy transcription (independent of TF).
    numeric = np.zeros_like(a)
    eps = 1e-4
    for idx in np.ndindex(a.shape):
        up, down = a.copy(), a.copy()
        up[idx] += eps
        down[idx] -= eps
        f = lambda v: np.sum(
            np.concatenate([lrn_reference(p, alpha=1e-3) for p in np.split(v, groups, -1)], -1) * w
        )
        numeric[idx] = (f(up) - f(down)) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3, atol=1e-5)


def test_lrn_survives_keras_save_and_load(tmp_path):
    inputs = keras.Input((4, 4, 8))
    outputs = LocalResponseNormalization(alpha=1e-3, bias=1.5, groups=2, name="lrn")(inputs)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "lrn.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("lrn")
    assert isinstance(layer, LocalResponseNormalization)
    assert (layer.alpha, layer.bias, layer.groups) == (1e-3, 1.5, 2)
    assert layer.implementation == "matmul"
    x = np.random.default_rng(3).uniform(0, 50, (2, 4, 4, 8)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


@IMPLEMENTATIONS
def test_lrn_in_bfloat16_keeps_dtype_and_value(implementation):
    x = np.random.default_rng(4).uniform(0, 50, (1, 3, 3, 8)).astype(np.float32)
    layer = LocalResponseNormalization(dtype="mixed_bfloat16", implementation=implementation)
    y = layer(x)
    assert y.dtype == tf.bfloat16
    np.testing.assert_allclose(np.asarray(tf.cast(y, tf.float32)), lrn_reference(x), rtol=2e-2)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lrn_fast_path_equals_tf_nn_reference(groups, dtype):
    """The default banded-matmul LRN computes tf.nn.local_response_normalization's function:
    same values and same input gradients, at the size of the model's lrn1 (96 channels)."""
    rng = np.random.default_rng(5)
    a = rng.gamma(1.0, 30.0, size=(2, 7, 7, 96)).astype(np.float32)  # ReLU-like, up to ~300
    g = rng.normal(size=a.shape).astype(np.float32)
    results = {}
    for implementation in ("matmul", "tf_nn"):
        x = tf.cast(tf.constant(a), dtype)
        layer = LocalResponseNormalization(
            groups=groups,
            implementation=implementation,
            dtype="mixed_bfloat16" if dtype == "bfloat16" else "float32",
        )
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * g)
        assert y.dtype == x.dtype
        results[implementation] = (
            tf.cast(y, tf.float32).numpy(),
            tf.cast(tape.gradient(loss, x), tf.float32).numpy(),
        )
    (y_fast, dx_fast), (y_ref, dx_ref) = results["matmul"], results["tf_nn"]
    if dtype == "float32":
        np.testing.assert_allclose(y_fast, y_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dx_fast, dx_ref, rtol=1e-4, atol=1e-6)
    else:  # both compute in float32 and round once: at most one bf16 step apart
        np.testing.assert_allclose(y_fast, y_ref, rtol=2**-7)
        np.testing.assert_allclose(dx_fast, dx_ref, rtol=2**-7, atol=1e-3)
    # ... and both equal the paper's formula (NumPy, per group).
    expected = np.concatenate([lrn_reference(p) for p in np.split(a, groups, -1)], -1)
    np.testing.assert_allclose(y_fast, expected, rtol=1e-5 if dtype == "float32" else 2**-7)


def test_lrn_rejects_unknown_implementation():
    with pytest.raises(ValueError, match="implementation"):
        LocalResponseNormalization(implementation="cudnn")


# PCA colour augmentation (§4.1) --------------------------------------------------------


def images(batch=8, size=6, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)


def test_pca_is_identity_at_inference():
    x = images()
    layer = PCAColorAugmentation(seed=0)
    np.testing.assert_array_equal(np.asarray(layer(x)), x)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)


def test_pca_offset_is_per_image_constant_in_eigen_span_and_differs_between_images():
    x = images()
    layer = PCAColorAugmentation(seed=1)
    offset = np.asarray(layer(x, training=True), np.float64) - x
    per_image = offset[:, :1, :1, :]
    # The same RGB offset on every pixel of an image.
    np.testing.assert_allclose(offset, np.broadcast_to(per_image, offset.shape), atol=1e-3)
    per_image = per_image.reshape(-1, 3)
    # Lies in the span of the eigenvectors scaled by eigenvalues: recover alpha by solving
    # P diag(lambda) alpha = offset; the reconstruction must be exact.
    basis = IMAGENET_EIGENVECTORS.astype(np.float64) * IMAGENET_EIGENVALUES
    alpha = np.linalg.solve(basis, per_image.T).T
    np.testing.assert_allclose(alpha @ basis.T, per_image, atol=1e-3)
    assert np.all(np.abs(alpha) < 1.0)  # 10 sigma of N(0, 0.1)
    # Different images get different noise.
    assert len({tuple(np.round(o, 4)) for o in per_image}) == len(per_image)


def test_pca_offset_lies_in_span_of_a_rank_deficient_basis():
    # With a zero third eigenvalue the offsets lie in the plane of the first two vectors.
    vectors = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))[0]
    layer = PCAColorAugmentation(eigenvalues=[30.0, 10.0, 0.0], eigenvectors=vectors, seed=2)
    x = images(batch=16)
    offset = (np.asarray(layer(x, training=True), np.float64) - x)[:, 0, 0, :]
    assert np.max(np.abs(offset @ vectors[:, 2])) < 1e-3
    assert np.max(np.abs(offset @ vectors[:, 0])) > 0.1


def test_pca_alpha_statistics():
    layer = PCAColorAugmentation(stddev=0.1, seed=3)
    x = np.zeros((4000, 1, 1, 3), np.float32)
    offset = np.asarray(layer(x, training=True), np.float64).reshape(-1, 3)
    basis = IMAGENET_EIGENVECTORS.astype(np.float64) * IMAGENET_EIGENVALUES
    alpha = np.linalg.solve(basis, offset.T).T
    assert np.all(np.abs(alpha.mean(axis=0)) < 0.01)  # ~4.5 standard errors
    np.testing.assert_allclose(alpha.std(axis=0), 0.1, rtol=0.06)
    # The three components are drawn independently.
    corr = np.corrcoef(alpha.T)
    assert np.max(np.abs(corr - np.eye(3))) < 0.08


def test_pca_stddev_zero_is_identity():
    x = images()
    np.testing.assert_array_equal(
        np.asarray(PCAColorAugmentation(stddev=0.0)(x, training=True)), x
    )


def test_pca_single_image_and_tf_data_map():
    x = images(batch=6)
    layer = PCAColorAugmentation(seed=4)
    single = np.asarray(layer(x[0], training=True))
    assert single.shape == x[0].shape
    off = single - x[0]
    np.testing.assert_allclose(off, np.broadcast_to(off[:1, :1], off.shape), atol=1e-3)

    ds = tf.data.Dataset.from_tensor_slices(x).map(lambda im: layer(im, training=True))
    epoch1 = np.stack(list(ds.as_numpy_iterator()))
    epoch2 = np.stack(list(ds.as_numpy_iterator()))
    off1 = (epoch1 - x)[:, 0, 0]
    assert np.all(np.abs(off1) > 0) and np.all(np.abs(off1) < 60)
    np.testing.assert_allclose(epoch1 - x, np.broadcast_to((epoch1 - x)[:, :1, :1], x.shape), atol=1e-3)
    # "drawn once each time the image is used": a new epoch, new noise.
    assert not np.allclose(epoch1, epoch2)


def test_pca_rejects_bad_arguments():
    with pytest.raises(ValueError, match="3 eigenvalues"):
        PCAColorAugmentation(eigenvalues=[1.0, 2.0])
    with pytest.raises(ValueError, match="stddev"):
        PCAColorAugmentation(stddev=-1)


def test_pca_serialises():
    layer = PCAColorAugmentation(eigenvalues=[3.0, 2.0, 1.0], stddev=0.2, seed=7)
    clone = PCAColorAugmentation.from_config(layer.get_config())
    assert clone.eigenvalues == [3.0, 2.0, 1.0] and clone.stddev == 0.2 and clone.seed == 7
    np.testing.assert_allclose(clone.eigenvectors, IMAGENET_EIGENVECTORS, rtol=1e-6)
