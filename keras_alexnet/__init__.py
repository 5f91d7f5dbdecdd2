"""keras_alexnet: AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) in TensorFlow 2 / Keras 3."""

from keras_alexnet.layers import (
    GroupedConv2D,
    LocalResponseNormalization,
    OnDevice,
    PCAColorAugmentation,
)
from keras_alexnet.metrics import TopKError
from keras_alexnet.model import (
    VARIANTS,
    AlexNet,
    AlexNetModel,
    ChannelSlice,
    format_layer_table,
    layer_table,
    print_layer_table,
)

__version__ = "0.1.0"
