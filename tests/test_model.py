"""The model: the paper's architecture, initialisation, serialisation and tower placement."""

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_alexnet
from keras_alexnet.layers import GroupedConv2D, LocalResponseNormalization, OnDevice
from keras_alexnet.model import grouped_to_towers, layer_table, towers_to_grouped

from test_layers import lrn_reference

# Paper §3.5 (docs/paper.md): weights + biases per layer. Two towers (groups) and one tower.
PAPER_PARAMS = {
    "conv1": 34_944,
    "conv2": 307_456,
    "conv3": 885_120,
    "conv4": 663_936,
    "conv5": 442_624,
    "fc6": 37_752_832,
    "fc7": 16_781_312,
    "fc8": 4_097_000,
}
ONE_TOWER_PARAMS = dict(PAPER_PARAMS, conv2=5 * 5 * 96 * 256 + 256, conv4=3 * 3 * 384 * 384 + 384, conv5=3 * 3 * 384 * 256 + 256)
# Output maps before pooling (§3.5, with 227x227 inputs).
PAPER_SHAPES = {
    "conv1": (55, 55, 96),
    "conv2": (27, 27, 256),
    "conv3": (13, 13, 384),
    "conv4": (13, 13, 384),
    "conv5": (13, 13, 256),
    "fc6": (4096,),
    "fc7": (4096,),
    "fc8": (1000,),
}
TINY = dict(input_shape=(67, 67, 3), classes=7, fc_units=32)


@pytest.fixture(scope="module")
def paper_model():
    return keras_alexnet.AlexNet(seed=0)


def leaf(model, name):
    layer = model.get_layer(name)
    return layer.layer if isinstance(layer, OnDevice) else layer


def test_paper_parameter_counts_and_shapes(paper_model):
    assert paper_model.output.shape == (None, 1000)
    assert paper_model.input.shape == (None, 227, 227, 3)
    rows = {r["layer"]: r for r in layer_table(paper_model)}
    assert {k: r["params"] for k, r in rows.items()} == PAPER_PARAMS
    assert {k: r["output_shape"] for k, r in rows.items()} == PAPER_SHAPES
    assert sum(PAPER_PARAMS.values()) == 60_965_224
    assert paper_model.count_params() == 60_965_224
    assert sum(int(np.prod(w.shape)) for w in paper_model.trainable_weights) == 60_965_224
    table = keras_alexnet.format_layer_table(paper_model)
    assert "60,965,224" in table and "conv1" in table and "290,400" in table


def test_towers_see_only_their_own_maps(paper_model):
    # conv2, conv4, conv5 read their own tower's maps; conv3 and fc6 read both.
    assert leaf(paper_model, "conv2_a").kernel.shape == (5, 5, 48, 128)
    assert leaf(paper_model, "conv4_b").kernel.shape == (3, 3, 192, 192)
    assert leaf(paper_model, "conv5_a").kernel.shape == (3, 3, 192, 128)
    assert leaf(paper_model, "conv3_a").kernel.shape == (3, 3, 256, 192)
    assert paper_model.get_layer("fc6").kernel.shape == (9216, 4096)
    inbound = paper_model.get_layer("conv2_b")._inbound_nodes[0].parent_nodes[0].operation
    assert inbound.name == "pool1_b"


@pytest.mark.parametrize("grouping,expected", [("grouped", PAPER_PARAMS), ("none", ONE_TOWER_PARAMS)])
def test_single_device_layouts_parameter_counts(grouping, expected):
    model = keras_alexnet.AlexNet(grouping=grouping, seed=0)
    assert {r["layer"]: r["params"] for r in layer_table(model)} == expected
    assert model.count_params() == (60_965_224 if grouping == "grouped" else 62_378_344)
    assert not any(isinstance(l, OnDevice) for l in model.layers)


def test_lrn_and_overlapping_pooling_are_really_there(paper_model):
    names = [l.name for l in paper_model.layers]
    assert not any(isinstance(leaf(paper_model, n), keras.layers.BatchNormalization) for n in names)
    for name in ("lrn1_a", "lrn1_b", "lrn2_a", "lrn2_b"):
        layer = leaf(paper_model, name)
        assert isinstance(layer, LocalResponseNormalization)
        assert (layer.depth_radius, layer.bias, layer.alpha, layer.beta) == (2, 2.0, 1e-4, 0.75)
    for name in ("pool1_a", "pool2_b", "pool5_a"):
        layer = leaf(paper_model, name)
        assert isinstance(layer, keras.layers.MaxPooling2D)
        assert layer.pool_size == (3, 3) and layer.strides == (2, 2)
    # Order within a tower (§3.3-3.4): conv -> ReLU -> LRN -> pool.
    assert names.index("conv1_a") < names.index("lrn1_a") < names.index("pool1_a") < names.index("conv2_a")
    assert leaf(paper_model, "conv1_a").activation is keras.activations.relu
    for name in ("drop6", "drop7"):
        assert paper_model.get_layer(name).rate == 0.5


def test_lrn1_computes_the_paper_formula_on_relu_of_conv1():
    model = keras_alexnet.AlexNet(seed=1, **TINY)
    cut = keras.Model(model.input, [model.get_layer("conv1_a").output, model.get_layer("lrn1_a").output])
    x = np.random.default_rng(0).normal(0, 60, (2, 67, 67, 3)).astype(np.float32)
    conv, lrn = cut.predict(x, verbose=0)
    assert conv.min() >= 0  # after ReLU
    np.testing.assert_allclose(lrn, lrn_reference(conv), rtol=1e-5, atol=1e-6)


def test_paper_initialisation(paper_model):
    # §5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7 and 0 elsewhere.
    positive = {"conv2", "conv4", "conv5", "fc6", "fc7"}
    for name in [l.name for l in paper_model.layers]:
        layer = leaf(paper_model, name)
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            continue
        kernel = np.asarray(layer.kernel)
        assert abs(kernel.mean()) < 0.01 * 5 / np.sqrt(kernel.size) + 1e-6, name
        assert kernel.std() == pytest.approx(0.01, rel=0.05 if kernel.size > 20000 else 0.1), name
        expected_bias = 1.0 if name.split("_")[0] in positive else 0.0
        np.testing.assert_array_equal(np.asarray(layer.bias), expected_bias, err_msg=name)


def test_initialisation_variants_are_arguments():
    model = keras_alexnet.AlexNet(
        weight_stddev={"conv3": 0.03, "conv4": 0.03, "conv5": 0.03, "default": 0.01},
        positive_bias=0.1,
        lrn_alpha=2e-5,
        lrn_bias=1.0,
        seed=2,
        **TINY,
    )
    assert np.asarray(leaf(model, "conv4_a").kernel).std() == pytest.approx(0.03, rel=0.1)
    assert np.asarray(leaf(model, "conv2_a").kernel).std() == pytest.approx(0.01, rel=0.1)
    np.testing.assert_allclose(np.asarray(leaf(model, "conv5_b").bias), 0.1, rtol=1e-7)
    np.testing.assert_array_equal(np.asarray(leaf(model, "conv3_b").bias), 0.0)
    lrn = leaf(model, "lrn2_b")
    assert (lrn.alpha, lrn.bias) == (2e-5, 1.0)
    no_lrn = keras_alexnet.AlexNet(lrn=False, **TINY)
    assert not any(l.name.startswith("lrn") for l in no_lrn.layers)


def test_same_seed_same_weights():
    a = keras_alexnet.AlexNet(seed=3, **TINY)
    b = keras_alexnet.AlexNet(seed=3, **TINY)
    c = keras_alexnet.AlexNet(seed=4, **TINY)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])


@pytest.mark.parametrize("grouping", ["towers", "grouped", "none"])
def test_keras_round_trip_identical_predictions(tmp_path, grouping):
    model = keras_alexnet.AlexNet(grouping=grouping, seed=5, **TINY)
    x = np.random.default_rng(1).normal(0, 50, (3, 67, 67, 3)).astype(np.float32)
    path = tmp_path / "alexnet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_alexnet.AlexNetModel)
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


def _tower_and_grouped_pair(seed=6):
    towers = keras_alexnet.AlexNet(classifier_activation=None, seed=seed, **TINY)
    grouped = keras_alexnet.AlexNet(grouping="grouped", classifier_activation=None, seed=seed + 1, **TINY)
    towers_to_grouped(towers, grouped)
    return towers, grouped


def test_two_towers_equal_single_device_grouped_convolution():
    towers, grouped = _tower_and_grouped_pair()
    x = tf.constant(np.random.default_rng(2).normal(0, 60, (4, 67, 67, 3)).astype(np.float32))
    y = tf.constant([0, 3, 6, 2])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = []
    for model in (towers, grouped):
        with tf.GradientTape() as tape:
            logits = model(x, training=False)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, model.trainable_weights)
        results.append((logits.numpy(), {w.path: g.numpy() for w, g in zip(model.trainable_weights, grads)}))
    (logits_t, grads_t), (logits_g, grads_g) = results
    assert np.std(logits_t) > 1e-3  # a non-trivial function
    np.testing.assert_allclose(logits_t, logits_g, rtol=1e-4, atol=1e-5)
    # Gradients: tower kernels are the halves of the grouped kernels.
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        for kind in ("kernel", "bias"):
            joined = np.concatenate([grads_t[f"{layer}_a/{layer}_a/{kind}"], grads_t[f"{layer}_b/{layer}_b/{kind}"]], axis=-1)
            np.testing.assert_allclose(joined, grads_g[f"{layer}/{kind}"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(grads_t["fc6/kernel"], grads_g["fc6/kernel"], rtol=1e-3, atol=1e-6)


def _logits_and_grads(model, x, y):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        logits = model(x, training=False)
        loss = loss_fn(y, logits)
    grads = tape.gradient(loss, model.trainable_weights)
    return logits.numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("grouping", ["towers", "grouped"])
def test_fast_path_computes_the_reference_function(grouping):
    """The default model (banded-matmul LRN) and the reference (tf.nn LRN), same weights:
    same logits and same gradient for every weight. He init keeps the signal alive through
    the tiny network, and lrn_alpha is raised so that LRN changes the function a lot (a
    broken LRN could not hide)."""
    kwargs = dict(TINY, grouping=grouping, weight_stddev="he", positive_bias=0.0, input_scale=1 / 64,
                  lrn_alpha=0.2, lrn_bias=1.0, classifier_activation=None)
    fast = keras_alexnet.AlexNet(seed=9, **kwargs)
    reference = keras_alexnet.AlexNet(seed=10, lrn_implementation="tf_nn", **kwargs)
    reference.set_weights(fast.get_weights())
    assert leaf(fast, "lrn1_a" if grouping == "towers" else "lrn1").implementation == "matmul"
    x = tf.constant(np.random.default_rng(3).normal(0, 60, (4, 67, 67, 3)).astype(np.float32))
    y = tf.constant([1, 4, 6, 0])
    logits_f, grads_f = _logits_and_grads(fast, x, y)
    logits_r, grads_r = _logits_and_grads(reference, x, y)
    no_lrn = keras_alexnet.AlexNet(seed=11, lrn=False, **kwargs)
    no_lrn.set_weights(fast.get_weights())
    assert np.max(np.abs(no_lrn(x).numpy() - logits_r)) > 0.3 * np.std(logits_r)
    np.testing.assert_allclose(logits_f, logits_r, rtol=1e-4, atol=1e-5 * np.std(logits_r))
    for w, gf, gr in zip(fast.trainable_weights, grads_f, grads_r):
        scale = np.max(np.abs(gr))
        assert scale > 0, w.path
        np.testing.assert_allclose(gf, gr, rtol=1e-3, atol=1e-4 * scale, err_msg=w.path)


def test_weight_conversion_round_trip():
    towers, grouped = _tower_and_grouped_pair(seed=8)
    back = keras_alexnet.AlexNet(seed=99, **TINY)
    grouped_to_towers(grouped, back)
    for a, b in zip(towers.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert isinstance(grouped.get_layer("conv2"), GroupedConv2D)


def test_bad_arguments():
    with pytest.raises(ValueError, match="grouping"):
        keras_alexnet.AlexNet(grouping="three")
    with pytest.raises(ValueError, match="two devices"):
        keras_alexnet.AlexNet(devices=["/CPU:0"])


# Placement ------------------------------------------------------------------------------

PLACED = re.compile(r"\] (?P<op>\S+)\((?P<type>\w+)\) placed on: \S*device:(?P<dev>\w+:\d+)")


def run_placement_worker(grouping="towers"):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="placer=2")
    worker = Path(__file__).with_name("placement_worker.py")
    proc = subprocess.run(
        [sys.executable, str(worker), grouping], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FIT DONE" in proc.stdout
    return [m.groupdict() for m in PLACED.finditer(proc.stderr)]


def test_towers_run_forward_and_backward_on_their_devices_in_model_fit():
    placements = run_placement_worker()
    # Only ops of the compiled training step that model.fit runs.
    step = [p for p in placements if p["op"].startswith("StatefulPartitionedCall/")]
    assert step, "no placement of the training step was logged"

    def devices_of(pattern, op_type):
        found = {p["dev"] for p in step if re.search(pattern, p["op"]) and p["type"] == op_type}
        assert found, f"no {op_type} for {pattern} in the training step"
        return found

    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        for tower, device in (("a", "CPU:0"), ("b", "CPU:1")):
            forward = rf"^StatefulPartitionedCall/\w+/{layer}_{tower}_\d+/"
            backward = rf"^StatefulPartitionedCall/gradients/\w+/{layer}_{tower}_\d+/"
            assert devices_of(forward, "Conv2D") == {device}
            assert devices_of(backward, "Conv2DBackpropFilter") == {device}
            assert devices_of(backward, "BiasAddGrad") == {device}
            assert devices_of(backward, "ReluGrad") == {device}
    for tower, device in (("a", "CPU:0"), ("b", "CPU:1")):
        # LRN (the default banded-matmul path): its band matmul and its hand-written
        # gradient's matmul run with the tower.
        assert devices_of(rf"^StatefulPartitionedCall/\w+/lrn1_{tower}_\d+/", "MatMul") == {device}
        assert devices_of(rf"gradients/\w+/lrn2_{tower}_\d+/.*_grad/", "MatMul") == {device}
        assert devices_of(rf"gradients/\w+/pool5_{tower}_\d+/", "MaxPoolGrad") == {device}
    # The weights and their momentum live with their tower too, so the SGD update of tower
    # b's 10 variables (5 kernels, 5 biases) runs on the second device: one momentum
    # assignment and one weight update each.
    updates = [p for p in step if p["op"].startswith("StatefulPartitionedCall/sgd/")]
    for op_type in ("AssignVariableOp", "AssignAddVariableOp"):
        on_b = [p for p in updates if p["type"] == op_type and p["dev"] == "CPU:1"]
        assert len(on_b) == 10, (op_type, len(on_b))


def test_compiled_model_round_trip_keeps_optimizer_state(tmp_path):
    model = keras_alexnet.AlexNet(seed=7, **TINY)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(3).normal(0, 50, (4, 67, 67, 3)).astype(np.float32)
    model.train_on_batch(x, np.arange(4))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.optimizer is not None and int(loaded.optimizer.iterations.numpy()) == 1
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
