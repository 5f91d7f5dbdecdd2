"""Every check of one Keras backend, run in a process of its own (the backend is fixed when
Keras is imported): ``KERAS_BACKEND=jax python tests/backend_checks.py REFERENCE.npz DIR``.

`tests/test_backends.py` writes REFERENCE.npz and the ``.keras`` files in DIR on
TensorFlow, runs this script once per backend, and reads the ``ok NAME`` lines it prints;
a failed check ends it with a traceback. NumPy transcriptions of the paper's formulas are
the reference for the layers, TensorFlow's outputs for the models and the grouped
convolution.
"""

import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402

import keras_alexnet  # noqa: E402
from keras_alexnet import layers  # noqa: E402
from keras_alexnet.model import AlexNet  # noqa: E402

BACKEND = keras.backend.backend()


def ok(name, detail=""):
    print(f"ok {name} {detail}".rstrip(), flush=True)


def relative(got, want):
    """Largest absolute difference over the largest absolute value of ``want``."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def lrn_reference(a, n=5, k=2.0, alpha=1e-4, beta=0.75, groups=1):
    """Paper §3.3, transcribed per channel group: b_i = a_i / (k + alpha * sum_j a_j^2)^beta
    over the window j = max(0, i - n/2) .. min(N - 1, i + n/2) of i's group."""
    a = np.asarray(a, np.float64)
    size = a.shape[-1] // groups
    b = np.empty_like(a)
    for i in range(a.shape[-1]):
        g0 = (i // size) * size
        lo, hi = max(g0, i - n // 2), min(g0 + size - 1, i + n // 2)
        b[..., i] = a[..., i] / (k + alpha * np.sum(a[..., lo:hi + 1] ** 2, axis=-1)) ** beta
    return b


def numpy_of(x):
    return keras.ops.convert_to_numpy(x)


def check_imports():
    assert "tensorflow" not in sys.modules, "keras_alexnet imported TensorFlow on " + BACKEND
    ok("no_tensorflow")


def check_layers(ref):
    x = ref["lrn_input"]
    for groups, params in ((1, dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)),
                           (2, dict(depth_radius=2, bias=1.0, alpha=2e-5, beta=0.75)),
                           (1, dict(depth_radius=1, bias=0.5, alpha=1e-2, beta=0.5))):
        got = numpy_of(layers.LocalResponseNormalization(groups=groups, **params)(x))
        want = lrn_reference(x, 2 * params["depth_radius"] + 1, params["bias"], params["alpha"], params["beta"], groups)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5, err_msg=f"LRN groups={groups} {params}")
    # The gradient by this backend's autodiff against TensorFlow's hand-written one.
    got = gradient_of_weighted_sum(layers.LocalResponseNormalization(), x, ref["lrn_weights"])
    assert relative(got, ref["lrn_gradient_tf"]) < 1e-5, relative(got, ref["lrn_gradient_tf"])
    ok("lrn", f"gradient relative difference to TensorFlow's {relative(got, ref['lrn_gradient_tf']):.1e}")

    conv = layers.GroupedConv2D(8, 3, strides=2, padding="same", groups=2)
    conv.build(ref["conv_input"].shape)
    conv.set_weights([ref["conv_kernel"], ref["conv_bias"]])
    diff = relative(numpy_of(conv(ref["conv_input"])), ref["conv_output_tf"])
    assert diff < 1e-5, diff
    ok("grouped_conv", f"relative difference to TensorFlow's {diff:.1e}")

    sliced = numpy_of(layers.ChannelSlice(3, 7)(x))
    np.testing.assert_array_equal(sliced, x[..., 3:7])
    ok("channel_slice")

    pca = layers.PCAColorAugmentation(ref["eigenvalues"], ref["eigenvectors"], stddev=0.1, seed=3)
    alpha = np.array([[0.1, -0.2, 0.05], [0.0, 0.3, -0.1]], np.float32)
    want = (alpha * ref["eigenvalues"]) @ ref["eigenvectors"].T  # offset_b = P (alpha_b * lambda)
    np.testing.assert_allclose(numpy_of(pca.offsets_for(alpha)), want, rtol=1e-5, atol=1e-4)
    images = np.full((2, 5, 5, 3), 100.0, np.float32)
    noisy = numpy_of(pca(images, training=True))
    offsets = noisy - images
    assert np.allclose(offsets, offsets[:, :1, :1, :], atol=1e-4) and not np.allclose(offsets[0], offsets[1])
    np.testing.assert_array_equal(numpy_of(pca(images)), images)  # inference: identity
    ok("pca")


def gradient_of_weighted_sum(layer, x, weights):
    """d/dx sum(layer(x) * weights), by this backend's autodiff."""
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: (layer(v) * weights).sum())(x))
    import torch

    v = torch.tensor(x, requires_grad=True)
    (layer(v) * torch.tensor(weights)).sum().backward()
    return v.grad.numpy()


def check_layer_tests():
    """Keras' own checks of a layer (symbolic and eager calls, fit, serialization; the
    mixed-precision check left out for time: the layers' float32 computation in bf16 is
    tested on TensorFlow)."""
    from keras.src import testing

    class Case(testing.TestCase):
        def runTest(self):
            pass

    case = Case()
    case.run_layer_test(layers.LocalResponseNormalization, {"depth_radius": 2, "groups": 2}, run_mixed_precision_check=False,
                        input_shape=(2, 3, 3, 8), expected_output_shape=(2, 3, 3, 8),
                        expected_num_trainable_weights=0)
    case.run_layer_test(layers.GroupedConv2D, {"filters": 4, "kernel_size": 3, "groups": 2}, run_mixed_precision_check=False,
                        input_shape=(2, 5, 5, 4), expected_output_shape=(2, 3, 3, 4),
                        expected_num_trainable_weights=2)
    case.run_layer_test(layers.ChannelSlice, {"start": 1, "stop": 3}, input_shape=(2, 3, 3, 4), run_mixed_precision_check=False,
                        expected_output_shape=(2, 3, 3, 2), expected_num_trainable_weights=0)
    case.run_layer_test(layers.PCAColorAugmentation, {"stddev": 0.1, "seed": 1}, input_shape=(2, 4, 4, 3),
                        run_mixed_precision_check=False,
                        call_kwargs={"training": True}, expected_output_shape=(2, 4, 4, 3),
                        expected_num_trainable_weights=0, expected_num_seed_generators=1)
    ok("run_layer_test")


def check_models(ref, folder):
    """A model saved on TensorFlow now, and the directories written before the backends
    (``OLD_MODELS``: tests/fixtures), give TensorFlow's outputs on real photos."""
    photos = ref["photos"]
    models = {"paper_towers": folder / "paper_towers.keras"}
    models.update({name: REPO / "tests" / "fixtures" / path
                   for name, path in (item.split("=") for item in os.environ["OLD_MODELS"].split(","))})
    loaded = {}
    for name, path in models.items():
        loaded[name] = keras.models.load_model(path, safe_mode=True)
        diff = relative(numpy_of(loaded[name](photos)), ref[f"{name}_outputs"])
        assert diff < 1e-5, (name, diff)
        ok(f"model_{name}", f"relative difference to TensorFlow's outputs {diff:.1e}")
    # And the outputs the old directories' own code computed when they were written.
    old = np.load(REPO / "tests" / "fixtures" / "old_outputs.npz")
    for name, key in (("old_run", "run"), ("old_converted", "converted")):
        diff = relative(numpy_of(loaded[name](old["inputs"])), old[key])
        assert diff < 1e-4, (name, diff)
    ok("old_inputs")
    try:
        AlexNet(devices=("/GPU:0", "/GPU:1"))
    except ValueError as e:
        assert "TensorFlow backend only" in str(e), e
    else:
        raise AssertionError("devices= accepted off TensorFlow")
    ok("devices_refused")


def check_training(ref):
    """The paper's network (two towers, 67 px) trained with Adam on real photos. On JAX
    from a tf.data pipeline with the PCA noise in it (TensorFlow there, whatever the
    backend: what train.py feeds); on PyTorch from arrays (TensorFlow's import alone is
    4 s of the suite's CPU, and the tf.data path is the same code)."""
    keras.utils.set_random_seed(0)
    if BACKEND == "jax":
        import tensorflow as tf

        pca = layers.PCAColorAugmentation(stddev=0.1, seed=0)
        data = (tf.data.Dataset.from_tensor_slices((ref["photos"], ref["labels"])).repeat().batch(8)
                .map(lambda x, y: (pca(x, training=True), y)))
        assert isinstance(next(iter(data))[0], tf.Tensor)
        fit = dict(x=data, steps_per_epoch=6)
    else:
        repeat = 3  # 6 steps of 8 an epoch, as above
        fit = dict(x=np.concatenate([ref["photos"]] * repeat), y=np.concatenate([ref["labels"]] * repeat),
                   batch_size=8, shuffle=False)  # in the order the tf.data pipeline gives
    model = AlexNet(input_shape=(67, 67, 3), fc_units=64, classes=4, dropout=0.0, input_scale=1 / 64,
                    weight_stddev={"default": "he", "fc8": 0.01}, positive_bias=0.0, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-4), loss="sparse_categorical_crossentropy")
    history = model.fit(**fit, epochs=5, verbose=0).history["loss"]
    assert history[-1] < 0.6 * history[0], history  # measured: 1.40 -> 0.53 (JAX), 1.41 -> 0.55 (PyTorch)
    ok("training", "loss by epoch " + " ".join(f"{v:.3f}" for v in history))


if __name__ == "__main__":
    reference, folder = np.load(sys.argv[1]), Path(sys.argv[2])
    check_imports()
    check_layers(reference)
    check_layer_tests()
    check_models(reference, folder)
    check_training(reference)
    ok("all", BACKEND)
