"""Fast tests, one per item of keras_alexnet.keras_compat, that fail when Keras (or
TensorFlow) changes under a workaround. The end-to-end proofs that the workarounds do
their job are elsewhere: the placement of every op of the train step
(test_model.py::test_towers_run_forward_and_backward_on_their_devices_in_model_fit) and
two workers training together (test_distributed.py)."""

import inspect
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_alexnet
from keras_alexnet import keras_compat, layers


def test_keras_is_the_minor_version_the_workarounds_were_written_for():
    assert keras.__version__.startswith(keras_compat.TESTED_KERAS + "."), (
        f"Keras {keras.__version__}: re-read every item of keras_alexnet/keras_compat.py "
        f"(written for {keras_compat.TESTED_KERAS}) before moving the pin")


def test_item1_the_private_train_step_members_exist():
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
    from keras.src.losses.loss import unscale_loss_for_distribution  # noqa: F401

    params = list(inspect.signature(TensorFlowTrainer._compute_loss).parameters)
    assert params[:1] == ["self"] and {"x", "y", "y_pred", "sample_weight", "training"} <= set(params)
    model = keras_alexnet.AlexNet(input_shape=(67, 67, 3), classes=3, fc_units=8)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    assert isinstance(model._loss_tracker, keras.metrics.Mean)
    assert callable(model.optimizer.scale_loss)
    # Our step and Keras' give the same loss and the same update on one batch.
    x = np.random.default_rng(0).normal(size=(2, 67, 67, 3)).astype("float32")
    y = np.array([0, 2])
    ours = keras_alexnet.AlexNet(input_shape=(67, 67, 3), classes=3, fc_units=8, seed=1, dropout=0.0)
    plain = keras.Model(ours.inputs, ours.outputs)  # Keras' own train step, same weights object
    start = [w.copy() for w in ours.get_weights()]
    results = []
    for m in (ours, plain):
        m.set_weights(start)
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        results.append((m.train_on_batch(x, y), [w.copy() for w in m.get_weights()]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_item2_symbolic_build_hook_has_the_signature_overridden():
    params = inspect.signature(keras.Model._maybe_symbolic_build).parameters
    assert list(params) == ["self", "iterator", "data_batch"]
    assert hasattr(keras.Model, "_symbolic_build")


def test_item3_optimizer_slots_live_on_their_variables_device():
    """Two logical CPUs (a subprocess: devices are fixed at TensorFlow's start)."""
    code = textwrap.dedent("""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, keras_alexnet
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        model = keras_alexnet.AlexNet(input_shape=(67, 67, 3), classes=3, fc_units=8, devices=devices)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
        model.optimizer.build(model.trainable_variables)
        slots = {v.path: v for v in model.optimizer.variables}
        for w in model.trainable_variables:
            if "conv" in w.path:
                m = [s for p, s in slots.items() if p.endswith(w.path.replace("/", "_") + "_momentum")]
                assert len(m) == 1, (w.path, sorted(slots))
                assert m[0].value.device == w.value.device, (w.path, m[0].value.device, w.value.device)
                print("SLOT", w.path, w.value.device.split("/")[-1])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split() for line in proc.stdout.splitlines() if line.startswith("SLOT")]
    devices = {path: dev for _, path, dev in lines}
    assert devices["conv1_a/conv1_a/kernel"].endswith(":0") and devices["conv1_b/conv1_b/kernel"].endswith(":1")
    assert len(lines) == 20  # 5 conv layers x 2 towers x (kernel, bias)


def test_item4_the_replaced_reduce_function_keeps_its_contract():
    from keras.src.backend.tensorflow import trainer as tf_trainer

    for name in ("reduce_per_replica", "_collective_all_reduce_multi_worker", "_is_per_replica_instance"):
        assert callable(getattr(tf_trainer, name)), name
    assert list(inspect.signature(tf_trainer.reduce_per_replica).parameters)[:3] == [
        "values", "strategy", "reduction"]
    keras_compat.patch_multi_worker_reduce()
    keras_compat.patch_multi_worker_reduce()  # idempotent
    assert tf_trainer._keras_alexnet_patched
    # Outside multi-worker collectives it is Keras' function: values pass through.
    values = {"loss": tf.constant(1.5)}
    out = tf_trainer.reduce_per_replica(values, tf.distribute.get_strategy(), "auto")
    assert float(out["loss"]) == 1.5


class _NoTraining(keras.layers.Layer):
    def call(self, x):
        return x


def test_item5_training_argument_detection():
    assert keras_compat.call_has_training_arg(keras.layers.Dropout(0.5))
    assert not keras_compat.call_has_training_arg(_NoTraining())


def test_item6_grouped_convolution_is_the_same_function_with_and_without_onednn(monkeypatch):
    x = tf.random.stateless_normal((2, 9, 9, 8), seed=(1, 2))
    layer = layers.GroupedConv2D(6, 3, padding="same", groups=2, activation="relu")
    layer.build(x.shape)
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    # Reference: two plain convolutions on the halves (what the paper's towers compute).
    halves = [tf.nn.conv2d(xh, kh, 1, "SAME") for xh, kh in
              zip(tf.split(x, 2, -1), np.split(kernel, 2, axis=-1))]
    expected = tf.nn.relu(tf.concat(halves, -1) + bias).numpy()
    paths = [False] + ([True] if keras_compat.onednn_enabled() else [])
    for path in paths:
        monkeypatch.setattr(layers, "onednn_enabled", lambda p=path: p)
        np.testing.assert_allclose(tf.function(layer)(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(keras_compat.onednn_enabled(), bool)


def test_item7_freezing_folds_variables_into_constants():
    v = tf.Variable([[2.0]])
    fn = tf.function(lambda x: tf.matmul(x, v)).get_concrete_function(tf.TensorSpec([1, 1]))
    frozen = keras_compat.freeze_variables(fn)
    ops = {op.type for op in frozen.graph.get_operations()}
    assert "ReadVariableOp" not in ops and "Const" in ops
    assert float(frozen(tf.constant([[3.0]]))[0][0][0]) == 6.0
