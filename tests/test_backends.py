"""The layers, the model and its saved files on JAX and PyTorch: one process per backend
(Keras fixes its backend at import) runs every check of that backend
(`tests/backend_checks.py`) against references written here, on TensorFlow."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_alexnet import console, layers, pretrained
from keras_alexnet.model import AlexNet
from backend_checks import variant_kwargs
from test_convert import SMALL_1000, caffe_layers, pb_net, random_caffe_weights

REPO = Path(__file__).resolve().parents[1]
IMAGENETTE_VAL = REPO.parent / "shared" / "data" / "imagenette" / "val"
VARIANT_MODELS = [(v, g) for v in ("paper", "bvlc_alexnet", "caffenet") for g in ("towers", "grouped", "none")]
VARIANT_MODELS.append(("torchvision", "none"))
CHECKS = ("no_tensorflow", "lrn", "grouped_conv", "channel_slice", "pca", "run_layer_test", "variants",
          "model_old_run", "model_old_converted", "old_inputs", "published_weights", "refusals", "model_parallel",
          "training", "train_script", "evaluate_script", "all")
# Written before the backends existed (tests/fixtures/make_old_dirs.py), on TensorFlow: a
# trained run of the paper's network in two towers, and a converted bvlc_alexnet (its LRN
# across both towers, then ChannelSlice) with random weights.
OLD = {"old_run": "old_run/best.keras", "old_converted": "old_converted/model.keras"}


def photos(per_class=4, classes=4, size=67):
    """Real photos (Imagenette's validation set), resized to ``size``, with class labels."""
    images, labels = [], []
    for label, folder in enumerate(sorted(IMAGENETTE_VAL.iterdir())[:classes]):
        for path in sorted(folder.iterdir())[:per_class]:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), np.float32))
            labels.append(label)
    return np.stack(images), np.array(labels, np.int32)


@pytest.fixture(scope="module")
def weights_server():
    """A small bvlc_alexnet .caffemodel (the paper's convolutions, fc6/fc7 of 8 units, random
    weights) served from 127.0.0.1, as its publisher serves the real one."""
    from test_pretrained import Server

    body = pb_net(caffe_layers(random_caffe_weights(0, SMALL_1000), "bvlc_alexnet"))
    server = Server()
    server.files["/bvlc_alexnet.caffemodel"] = body
    server.weights = f"{server.url}/bvlc_alexnet.caffemodel"
    server.file_hash = "sha256:" + hashlib.sha256(body).hexdigest()
    yield server
    server.httpd.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, weights_server):
    """REFERENCE.npz and the models' .keras files, written on TensorFlow."""
    folder = tmp_path_factory.mktemp("backends")
    rng = np.random.default_rng(0)
    ref = {}
    ref["photos"], ref["labels"] = photos()
    ref["photos"] -= 120.0
    for variant, grouping in VARIANT_MODELS:  # every variant and grouping, small
        model = AlexNet(**variant_kwargs(variant, grouping), seed=0, input_scale=1 / 64,
                        weight_stddev={"default": "he", "fc8": 0.05}, positive_bias=0.0, classifier_activation=None)
        ref[f"{variant}_{grouping}_outputs"] = np.asarray(model(ref["photos"], training=False))
        ref[f"{variant}_{grouping}_params"] = model.count_params()
        model.save(folder / f"{variant}_{grouping}.keras")
    # The published weights by URL (downloaded, checked, converted into the cache), on
    # TensorFlow: the outputs every backend's download and conversion must give.
    ref["photos_227"] = photos(size=227)[0] - 120.0
    os.environ[pretrained.CACHE_ENV] = str(folder / "cache_tensorflow")
    try:
        published = AlexNet(weights=weights_server.weights, file_hash=weights_server.file_hash, fc_units=8)
    finally:
        del os.environ[pretrained.CACHE_ENV]
    ref["published_outputs"] = np.asarray(published(ref["photos_227"], training=False))
    for name, path in OLD.items():
        old = keras.models.load_model(REPO / "tests" / "fixtures" / path)
        ref[f"{name}_outputs"] = np.asarray(old(ref["photos"], training=False))

    ref["lrn_input"] = rng.normal(0, 30, (2, 4, 4, 8)).astype(np.float32)
    ref["lrn_weights"] = rng.normal(0, 1, (2, 4, 4, 8)).astype(np.float32)
    x = tf.constant(ref["lrn_input"])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(layers.LocalResponseNormalization()(x) * ref["lrn_weights"])
    ref["lrn_gradient_tf"] = tape.gradient(y, x).numpy()

    conv = layers.GroupedConv2D(8, 3, strides=2, padding="same", groups=2)
    ref["conv_input"] = rng.normal(0, 1, (2, 7, 7, 4)).astype(np.float32)
    conv.build(ref["conv_input"].shape)
    ref["conv_kernel"] = rng.normal(0, 0.3, conv.kernel.shape).astype(np.float32)
    ref["conv_bias"] = rng.normal(0, 0.1, (8,)).astype(np.float32)
    conv.set_weights([ref["conv_kernel"], ref["conv_bias"]])
    ref["conv_output_tf"] = keras.ops.convert_to_numpy(conv(ref["conv_input"]))
    ref["eigenvalues"], ref["eigenvectors"] = layers.IMAGENET_EIGENVALUES, layers.IMAGENET_EIGENVECTORS
    np.savez(folder / "reference.npz", **ref)
    return folder


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_every_check_of_a_backend(backend, reference, weights_server):
    env = dict(os.environ, KERAS_BACKEND=backend, OLD_MODELS=",".join(f"{name}={path}" for name, path in OLD.items()),
               VARIANT_MODELS=",".join(f"{v}:{g}" for v, g in VARIANT_MODELS),
               PUBLISHED=f"{weights_server.weights} {weights_server.file_hash}")
    env[pretrained.CACHE_ENV] = str(reference / f"cache_{backend}")
    for name in ("TF_CPP_MIN_LOG_LEVEL", console.VERBOSE_ENV):  # what the package hides is the point
        env.pop(name, None)
    if backend == "jax":
        # JAX compiles each op it meets; LLVM's optimisation of those tiny programs was half
        # of this process's CPU (21.7 s against 10.4 s up to the model checks, measured).
        # Two CPU devices: the paper's two-device split (keras_alexnet.backends.paper_model_parallel).
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                            " --xla_force_host_platform_device_count=2").strip()
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "backend_checks.py"),
                           str(reference / "reference.npz"), str(reference)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    print(proc.stdout)
    passed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ok ")]
    checks = [c for c in CHECKS if backend == "jax" or c != "model_parallel"]
    assert proc.returncode == 0 and passed == checks, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.splitlines()[-1].startswith(f"ok all {backend} ")
    # TensorFlow (imported by the input pipeline, after the package) printed none of its
    # start-up noise (keras_alexnet/console.py).
    assert not [line for line in proc.stderr.splitlines() if console.is_noise(line) and line.strip()], proc.stderr[-3000:]
    # The run trained on this backend (train.py, then a divergence recovered and a resume)
    # gives the same outputs on TensorFlow.
    run = reference / f"run_{backend}"
    want = np.load(reference / f"run_{backend}_outputs.npz")["outputs"]
    got = np.asarray(keras.models.load_model(run / "best.keras")(np.load(reference / "reference.npz")["photos"], training=False))
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-5
