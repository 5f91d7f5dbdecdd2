"""keras_alexnet: AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) in TensorFlow 2 / Keras 3."""

from keras_alexnet import console as _console, startup as _startup

# TensorFlow's and Keras' imports create some 750,000 objects that are never garbage:
# the collector is paused while they are made (keras_alexnet/startup.py).
with _startup.collector_paused():
    # Every entry point (train.py, evaluate.py, `python -m keras_alexnet.X`, the notebooks)
    # imports TensorFlow through this file: hide its start-up noise here, before that import.
    # On JAX or PyTorch the layers and model do not need TensorFlow; the tf.data pipeline
    # imports it later, and its noise is hidden then.
    if _console.keras_backend_name() == "tensorflow":
        _console.quiet_tensorflow()
    else:
        _console.quiet_tensorflow_when_imported()

    from keras_alexnet.layers import (
        ChannelSlice,
        GroupedConv2D,
        LocalResponseNormalization,
        OnDevice,
        PCAColorAugmentation,
    )
    from keras_alexnet.metrics import TopKError
    from keras_alexnet.model import (
        AlexNet,
        AlexNetModel,
        format_layer_table,
        layer_table,
        print_layer_table,
    )
    from keras_alexnet.variants import VARIANTS

__version__ = "0.1.0"

# keras.applications-style helpers (keras_alexnet.applications). Imported on first use:
# they need keras_alexnet.runs, which imports the data pipeline, heavier than the model.
_LAZY = {"preprocess_input": "applications", "decode_predictions": "applications"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"keras_alexnet.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'keras_alexnet' has no attribute {name!r}")
