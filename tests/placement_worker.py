"""Runs a short `model.fit` with the CPU split into two logical devices.

Run as a subprocess by tests/test_model.py with TF_CPP_VMODULE=placer=2, so TensorFlow's
placer logs where every op of the compiled training step actually runs.
Usage: python placement_worker.py GROUPING
"""

import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import numpy as np

import keras_alexnet

devices = [d.name for d in tf.config.list_logical_devices("CPU")]
assert len(devices) == 2, devices
model = keras_alexnet.AlexNet(
    input_shape=(67, 67, 3), classes=5, fc_units=16, devices=devices, seed=0,
    grouping=sys.argv[1] if len(sys.argv) > 1 else "towers",
)
model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
x = np.random.default_rng(0).normal(size=(4, 67, 67, 3)).astype("float32")
y = np.arange(4) % 5
print("DEVICES", *devices, flush=True)
model.fit(x, y, batch_size=4, epochs=1, verbose=0)
print("FIT DONE", flush=True)
