"""Every check of one Keras backend, run in a process of its own (the backend is fixed when
Keras is imported): ``KERAS_BACKEND=jax python tests/backend_checks.py REFERENCE.npz DIR``.

`tests/test_backends.py` writes REFERENCE.npz and the ``.keras`` files in DIR on
TensorFlow, runs this script once per backend, and reads the ``ok NAME`` lines it prints;
a failed check ends it with a traceback. NumPy transcriptions of the paper's formulas are
the reference for the layers, TensorFlow's outputs for the models and the grouped
convolution.
"""

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402

import keras_alexnet  # noqa: E402, F401  (its __init__: the layers registered, the TensorFlow import hook)
from keras_alexnet import layers  # noqa: E402
from keras_alexnet.model import AlexNet  # noqa: E402

BACKEND = keras.backend.backend()


def ok(name, detail=""):
    """``ok NAME [detail] (CPU seconds of this process so far)``."""
    cpu = sum(os.times()[:2])
    print(f"ok {name} {detail} ({cpu:.1f} s CPU)".replace("  ", " "), flush=True)


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


def lrn_by_slices(a, n=5, k=2.0, alpha=1e-4, beta=0.75):
    """The paper's LRN in `keras.ops`, its window sum as n shifted slices of the zero-padded
    squares (no band matrix, no custom gradient): what autodiff differentiates."""
    ops = keras.ops
    squares = ops.pad(ops.square(a), [(0, 0)] * (len(a.shape) - 1) + [(n // 2, n // 2)])
    channels = a.shape[-1]
    window = sum(squares[..., i:i + channels] for i in range(n))
    return a / ops.power(k + alpha * window, beta)


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
    # The layer's hand-written gradient (keras.ops.custom_gradient) against this backend's
    # autodiff of the paper's formula written out, and against TensorFlow's gradient.
    got = gradient_of_weighted_sum(layers.LocalResponseNormalization(), x, ref["lrn_weights"])
    autodiff = gradient_of_weighted_sum(lrn_by_slices, x, ref["lrn_weights"])
    assert relative(got, autodiff) < 1e-5, relative(got, autodiff)
    assert relative(got, ref["lrn_gradient_tf"]) < 1e-5, relative(got, ref["lrn_gradient_tf"])
    ok("lrn", f"gradient relative difference to autodiff's {relative(got, autodiff):.1e}, "
              f"to TensorFlow's {relative(got, ref['lrn_gradient_tf']):.1e}")

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


def variant_kwargs(variant, grouping):
    """The small AlexNet of ``variant`` in ``grouping`` that every backend builds (67 px;
    torchvision's average pool fits 224 px only, so its network is built without fc6-fc8)."""
    top = dict(include_top=False) if variant == "torchvision" else dict(fc_units=32, classes=10)
    return dict(variant=variant, grouping=grouping, input_shape=(67, 67, 3), **top)


def check_variants(ref, folder):
    """Every variant in every grouping (``VARIANT_MODELS``), built here with the arguments
    TensorFlow's was built with: the same parameter count; and TensorFlow's saved model of
    it gives TensorFlow's outputs on real photos. JAX computes the outputs of two of them,
    the paper's towers and bvlc_alexnet's (its LRN across both towers), since each model
    costs JAX a second or more of compiling; the grouped layout runs on JAX in
    `check_model_parallel` and `check_training`."""
    worst = 0.0
    for item in os.environ["VARIANT_MODELS"].split(","):
        variant, grouping = item.split(":")
        assert AlexNet(**variant_kwargs(variant, grouping)).count_params() == int(ref[f"{variant}_{grouping}_params"]), item
        if BACKEND == "jax" and (variant, grouping) not in (("paper", "towers"), ("bvlc_alexnet", "towers")):
            continue
        loaded = keras.models.load_model(folder / f"{variant}_{grouping}.keras", safe_mode=True)
        diff = relative(numpy_of(loaded(ref["photos"])), ref[f"{variant}_{grouping}_outputs"])
        assert diff < 1e-5, (item, diff)
        worst = max(worst, diff)
    ok("variants", f"outputs within {worst:.1e} of TensorFlow's (relative to the largest)")


def check_published_weights(ref):
    """``AlexNet(weights=URL, file_hash=...)``: downloaded from the test's local server,
    checked against its hash, converted into this process's cache on this backend, and
    equal to TensorFlow's conversion of the same file; a second call uses the cache."""
    from keras_alexnet import pretrained

    url, file_hash = os.environ["PUBLISHED"].split()
    model = AlexNet(weights=url, file_hash=file_hash, fc_units=8)  # the small file's fc6, fc7
    diff = relative(numpy_of(model(ref["photos_227"])), ref["published_outputs"])
    assert diff < 1e-4, diff  # the converter tests' measure
    entry = pretrained.named(url, file_hash)
    assert pretrained.converted(entry) is not None  # cached: the next call downloads nothing
    ok("published_weights", f"relative difference to TensorFlow's conversion {diff:.1e}")


def check_models(ref, folder):
    """The directories written before the backends (``OLD_MODELS``: tests/fixtures) give
    TensorFlow's outputs on real photos."""
    photos = ref["photos"]
    models = {name: REPO / "tests" / "fixtures" / path
              for name, path in (item.split("=") for item in os.environ["OLD_MODELS"].split(","))}
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


def check_refusals(folder):
    """What only TensorFlow does refuses this backend with a message, not a traceback."""
    from keras_alexnet import backends, export, hardware

    def refused(call, *words):
        try:
            call()
        except backends.NeedsTensorFlow as e:
            assert "needs the TensorFlow backend" in str(e) and BACKEND in str(e), e
            assert all(w in str(e) for w in words), (words, e)
        else:
            raise AssertionError(f"{call} accepted on {BACKEND}")

    refused(lambda: AlexNet(devices=("/GPU:0", "/GPU:1")), "paper_model_parallel")
    refused(lambda: hardware.make_strategy("mirrored"), "tf.distribute")
    refused(lambda: hardware.make_strategy("multi-worker"), "tf.distribute")
    refused(lambda: export.serving_module(folder / "paper_towers.keras"), "export")
    refused(lambda: export.tflite_function(folder / "paper_towers.keras"), "export")
    assert isinstance(hardware.make_strategy("auto"), hardware.OneDevice)
    assert hardware.choose_xla("float32") == (BACKEND == "jax")
    # bf16 on a bf16 CPU where it measured faster than float32 (PyTorch), not on JAX.
    bf16_cpu = hardware.choose_precision(cpu_flags={"avx512f", "avx512_bf16"}, gpu_capabilities=[])
    assert bf16_cpu == ("float32" if BACKEND == "jax" else "mixed_bfloat16"), bf16_cpu
    try:
        layers.LocalResponseNormalization(implementation="tf_nn")(np.ones((1, 2, 2, 4), np.float32))
    except ValueError as e:
        assert "'matmul'" in str(e), e
    else:
        raise AssertionError("tf_nn LRN accepted")
    ok("refusals")


def check_training(ref, distribution=None):
    """The paper's network (67 px) trained with Adam on real photos. On JAX in the
    grouped layout split over two devices (``distribution``: `check_model_parallel`'s),
    from a tf.data pipeline with the PCA noise in it (TensorFlow there, whatever the
    backend: what train.py feeds); on PyTorch in two towers, from arrays (the tf.data
    path is the same code)."""
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
    with distribution.scope() if distribution else contextlib.nullcontext():
        model = AlexNet(input_shape=(67, 67, 3), fc_units=64, classes=4, dropout=0.0, input_scale=1 / 64,
                        weight_stddev={"default": "he", "fc8": 0.01}, positive_bias=0.0, seed=0,
                        grouping="grouped" if distribution else "towers")
        model.compile(optimizer=keras.optimizers.Adam(3e-4), loss="sparse_categorical_crossentropy")
        history = model.fit(**fit, epochs=5, verbose=0).history["loss"]
    assert history[-1] < 0.6 * history[0], history  # measured: 1.40 -> 0.53 (JAX), 1.41 -> 0.55 (PyTorch)
    if distribution:  # the split held through training
        kernel = model.get_layer("conv2").kernel.value
        assert {s.data.shape for s in kernel.addressable_shards} == {(5, 5, 48, 128)}
        assert len({s.device.id for s in kernel.addressable_shards}) == 2
    ok("training", "loss by epoch " + " ".join(f"{v:.3f}" for v in history))


def check_model_parallel(ref):
    """JAX: the paper's split over two devices (two CPU devices here, from
    ``XLA_FLAGS=--xla_force_host_platform_device_count=2``) with
    `keras_alexnet.backends.paper_model_parallel`. A two-tower model's weights go into the
    sharded grouped network; each device then holds exactly one tower's kernels and the
    predictions equal the unsharded network's. (`check_training` trains under it.)"""
    import jax

    from keras_alexnet.backends import paper_model_parallel
    from keras_alexnet.model import towers_to_grouped

    devices = jax.devices()
    assert len(devices) == 2, devices
    kwargs = dict(input_shape=(67, 67, 3), fc_units=64, classes=10, seed=0, input_scale=1 / 64,
                  weight_stddev={"default": "he", "fc8": 0.05}, positive_bias=0.0, classifier_activation=None)
    towers = AlexNet(**kwargs)
    want = numpy_of(towers(ref["photos"]))
    distribution = paper_model_parallel()
    with distribution.scope():
        model = AlexNet(grouping="grouped", **kwargs)
        towers_to_grouped(towers, model)
        got = model.predict(ref["photos"], batch_size=16, verbose=0)
    diff = relative(got, want)
    assert diff < 1e-5, diff

    def placement():
        """{layer: {device id: the tower whose kernel that device holds}}."""
        where = {}
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
            kernel = model.get_layer(name).kernel.value
            where[name] = {}
            for shard in kernel.addressable_shards:
                held = np.asarray(shard.data)
                for index, tower in enumerate("ab"):
                    if name.startswith("conv"):
                        inner = towers.get_layer(f"{name}_{tower}")
                        tower_kernel = numpy_of(getattr(inner, "layer", inner).kernel)
                    else:  # one Dense in the towers model; each tower computes half its units
                        tower_kernel = np.split(numpy_of(towers.get_layer(name).kernel), 2, axis=-1)[index]
                    if held.shape == tower_kernel.shape and np.array_equal(held, tower_kernel):
                        where[name][shard.device.id] = tower
        return where

    expected = {name: {devices[0].id: "a", devices[1].id: "b"}
                for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")}
    assert placement() == expected, placement()
    fc8 = model.get_layer("fc8").kernel.value
    assert all(s.data.shape == fc8.shape for s in fc8.addressable_shards)  # replicated
    ok("model_parallel", f"two devices, one tower each; outputs within {diff:.1e} of the unsharded towers'")
    return distribution


def check_train_script(ref, folder):
    """train.py on this backend, in this process: the recipe's SGD with weight decay, the
    plateau schedule, the divergence check's recovery (epoch 2's rate jumps to 1e7, so it
    diverges and the run goes back to epoch 1's checkpoint at a tenth of the rate), a full
    disk at epoch 3's checkpoint (exit 4) and the same command resuming after epoch 2,
    then evaluate.py's ten crops. The run's best.keras and its
    outputs on the photos go back to the parent, which loads it on TensorFlow."""
    sys.path.insert(0, str(REPO / "tests"))
    import fault_worker
    import train_cli
    from keras_alexnet import evaluation, run_files, runs, synthetic

    data = synthetic.make_dataset(folder / f"data_{BACKEND}", num_classes=3, train_per_class=8, val_per_class=4,
                                  size=64)
    run_dir = folder / f"run_{BACKEND}"
    flags = ["--data-dir", data, "--output-dir", run_dir, "--preset", "tiny", "--resize-size", "72",
             "--crop-size", "67", "--fc-units", "32", "--batch-size", "8", "--quiet", "--max-steps-per-epoch",
             "2", "--precision", "float32", "--on-divergence", "recover", "--epochs", "3"]
    undo = []

    def patch(obj, name, value):
        undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    fault_worker.inject("lr:2:1e7", patch)
    fault_worker.inject("enospc-save:epoch-0003.keras", patch)  # a full disk at epoch 3's checkpoint
    code, out, err = train_cli.main(flags)
    for obj, name, value in reversed(undo):
        setattr(obj, name, value)
    assert code == 4, out[-2000:] + err[-3000:]
    assert "Recovery 1/3: restarting from epoch 1" in out and "learning rate 0.01 -> 0.001" in out, out[-2000:]
    code, out, err = train_cli.main(flags)
    assert code == 0 and f"Resuming {run_dir} after epoch 2" in out, out[-2000:] + err[-3000:]
    metrics = run_files.read_metrics(run_dir)
    assert list(metrics["epoch"]) == [1.0, 2.0, 3.0] and np.isfinite(metrics["loss"]).all(), metrics
    np.testing.assert_allclose(metrics["lr"], [0.01, 0.001, 0.001], rtol=1e-5)
    ok("train_script", "epochs 1-3, loss " + " ".join(f"{v:.3f}" for v in metrics["loss"]))

    run = runs.open_run(run_dir)
    source = evaluation.load_eval_source(run, data)
    results = evaluation.run_evaluation(run, source, crops="ten", progress=False)
    assert results["images"] == 12, results
    np.savez(folder / f"run_{BACKEND}_outputs.npz", outputs=numpy_of(run.model(ref["photos"])))
    ok("evaluate_script", f"ten-crop top-1 error {results['top1_error']:.3f} on {results['images']} images")


if __name__ == "__main__":
    reference, folder = np.load(sys.argv[1]), Path(sys.argv[2])
    check_imports()
    check_layers(reference)
    check_layer_tests()
    check_variants(reference, folder)
    check_models(reference, folder)
    check_published_weights(reference)
    check_refusals(folder)
    check_training(reference, check_model_parallel(reference) if BACKEND == "jax" else None)
    check_train_script(reference, folder)
    ok("all", BACKEND)
