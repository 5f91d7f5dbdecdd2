"""What differs between the Keras backends (TensorFlow, JAX, PyTorch): which one runs,
what only TensorFlow does, and the paper's two-GPU split on JAX.

The layers, the model, training (`model.fit` fed by the package's `tf.data` pipeline),
evaluation and the saved files work on every backend. TensorFlow-only are the
`tf.distribute` strategies, the towers' `tf.device` placement (``AlexNet(devices=...)``),
SavedModel/TFLite export and the tf.data service input; each refuses another backend with
`require_tensorflow`'s message rather than a traceback from deep inside TensorFlow.

On JAX the paper's one-tower-per-GPU split (§3.2) is `paper_model_parallel`: Keras'
``keras.distribution.ModelParallel`` cannot pin one whole layer to a device, it shards
a variable over a mesh axis. Sharding the ``grouping="grouped"`` network's kernels on
their output channels over two devices gives the split: a grouped layer's first half of
outputs is tower a (group 0), its second half tower b, and a layout per layer output
keeps each tower's feature maps on its own device.
"""

import keras

TENSORFLOW = "tensorflow"


class NeedsTensorFlow(RuntimeError):
    """A TensorFlow-only feature asked for on another Keras backend."""


def backend():
    """The Keras backend this process runs on (fixed when Keras is imported)."""
    return keras.backend.backend()


def on_tensorflow():
    """Whether Keras runs on TensorFlow (the layers' TensorFlow fast paths, `tf.device`)."""
    return backend() == TENSORFLOW


def require_tensorflow(feature, instead=""):
    """Raises `NeedsTensorFlow` naming ``feature`` (and what to do ``instead``) unless
    Keras runs on TensorFlow."""
    if not on_tensorflow():
        raise NeedsTensorFlow(
            f"{feature} needs the TensorFlow backend; Keras runs on {backend()} here (KERAS_BACKEND). "
            + (instead or f"Run it with KERAS_BACKEND={TENSORFLOW}: the .keras files load there unchanged."))


def paper_model_parallel(devices=None):
    """The paper's split of the network over two devices, for the JAX backend.

    Use it around the building of a ``grouping="grouped"`` model (the same function and
    parameters as the towers)::

        distribution = paper_model_parallel()        # the first two devices
        keras.distribution.set_distribution(distribution)
        model = AlexNet(grouping="grouped")

    Every grouped layer (conv1-conv5 as the paper's figure draws them, and fc6, fc7) is
    sharded on its output channels: device 0 holds tower a's kernels, device 1 tower b's.
    Where the paper's towers exchange activations (into conv3, fc6, fc7, fc8) XLA moves
    them between the devices. fc8 and the batch dimension are replicated.

    Args:
        devices: two device names (``keras.distribution.list_devices()``); None takes the
            first two. On one host's CPUs, ``XLA_FLAGS=--xla_force_host_platform_device_count=2``
            (set before JAX is imported) makes two.

    Returns:
        A ``keras.distribution.ModelParallel``.

    Raises:
        NeedsTensorFlow-like RuntimeError: on another backend (``AlexNet(devices=...)``
            places the towers on TensorFlow).
        ValueError: fewer than two devices.
    """
    if backend() != "jax":
        raise RuntimeError(f"paper_model_parallel needs the JAX backend (Keras runs on {backend()}); "
                           "on TensorFlow the towers are placed with AlexNet(devices=(...)).")
    from keras import distribution as kd

    devices = list(devices) if devices is not None else kd.list_devices()[:2]
    if len(devices) != 2:
        raise ValueError(f"the paper's split needs two devices, got {devices}. On CPUs set "
                         "XLA_FLAGS=--xla_force_host_platform_device_count=2 before JAX is imported.")
    mesh = kd.DeviceMesh(shape=(1, 2), axis_names=("batch", "model"), devices=devices)
    layouts = kd.LayoutMap(mesh)
    prefix = r"(.*/)?"  # a layer's output path carries the model's name scope
    layouts[prefix + r"conv[1-5]/kernel"] = (None, None, None, "model")
    layouts[prefix + r"(conv[1-5]|fc[67])/bias"] = ("model",)
    layouts[prefix + r"fc[67]/kernel"] = (None, "model")
    layouts[prefix + r"(conv[1-5]|lrn[12]|pool[125])/output"] = (None, None, None, "model")
    layouts[prefix + r"(fc[67]|drop[67])/output"] = (None, "model")
    return kd.ModelParallel(layout_map=layouts, batch_dim_name="batch")
