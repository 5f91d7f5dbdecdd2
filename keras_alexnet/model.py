"""AlexNet as in Krizhevsky, Sutskever & Hinton, NIPS 2012 (§3, Fig. 2).

The network of the paper's Fig. 2 is two towers, one per GPU: conv1's 96 maps are split
48/48, conv2, conv4 and conv5 see only their own tower's maps, and conv3, fc6 and fc7 read
both towers. `AlexNet(grouping="towers")` (the default) builds exactly that from plain
`keras.layers.Conv2D` layers, each tower under `tf.device` on its own device. Two other
layouts compute on one device:

- ``grouping="grouped"``: the same function (the same 60,965,224 parameters, weights
  convertible with `towers_to_grouped` / `grouped_to_towers`) with each pair of tower
  layers fused into one grouped `tf.nn.conv2d` (oneDNN on CPU).
- ``grouping="none"``: one tower, no groups (62,378,344 parameters), for comparison.

Layer names follow the paper: conv1_a / conv1_b, lrn1_a, pool1_a, ..., fc6, fc7, fc8 for
the towers, conv1, lrn1, pool1, ... for the one-device layouts.

The published ImageNet AlexNets are variants of the same builder, ``AlexNet(variant=...)``
(`VARIANTS`): Caffe's ``"bvlc_alexnet"`` and ``"caffenet"`` and torchvision's
``"torchvision"``; `keras_alexnet.convert` reads their weight files into them.
"""

import numpy as np
import keras
import tensorflow as tf

from keras_alexnet.keras_compat import TowerTrainStep, colocate_optimizer_slots
from keras_alexnet.layers import PAPER_LAYERS, ChannelSlice, GroupedConv2D, LocalResponseNormalization, OnDevice

# The paper's five conv layers (§3.5): (kernels, size, stride, padding, towers-only input).
# "own_tower" means the layer sees only the maps of its own tower (Fig. 2).
CONV_LAYERS = {
    "conv1": dict(filters=96, size=11, stride=4, padding="valid", own_tower=True),
    "conv2": dict(filters=256, size=5, stride=1, padding="same", own_tower=True),
    "conv3": dict(filters=384, size=3, stride=1, padding="same", own_tower=False),
    "conv4": dict(filters=384, size=3, stride=1, padding="same", own_tower=True),
    "conv5": dict(filters=256, size=3, stride=1, padding="same", own_tower=True),
}
# LRN after the ReLU of conv1 and conv2 (§3.3); overlapping 3/2 max pooling after conv1,
# conv2 and conv5 (§3.4).
LRN_AFTER = ("conv1", "conv2")
POOL_AFTER = {"conv1": "pool1", "conv2": "pool2", "conv5": "pool5"}
# §5: "We initialized the neuron biases in the second, fourth, and fifth convolutional
# layers, as well as in the fully-connected hidden layers, with the constant 1 ... the
# remaining layers with the constant 0." (Popular summaries that say "all biases 0" are
# wrong.)
POSITIVE_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")
GROUPINGS = ("towers", "grouped", "none")


def default_devices():
    """The paper's placement: the first two GPUs when there are two, else no placement.

    Returns a pair of device names, or ``(None, None)``, meaning the towers run wherever
    the caller runs the model (the one device there is, or each replica's device under a
    `tf.distribute` strategy).
    """
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) >= 2:
        return (gpus[0].name, gpus[1].name)
    return (None, None)


@keras.saving.register_keras_serializable(package="keras_alexnet")
class AlexNetModel(TowerTrainStep, keras.Model):
    """A functional `keras.Model` whose training step keeps gradients on their towers.

    Keras' own train step takes gradients with `tf.GradientTape`, whose gradient ops
    carry no device, so the backward pass of both towers would land on the first device.
    `keras_alexnet.keras_compat.TowerTrainStep` takes them with `tf.gradients` inside
    the compiled step (each gradient colocated with its forward op: tower b's
    `Conv2DBackpropFilter` runs on tower b's device), and `compile` makes the optimizer
    create each slot on its variable's device. Everything else is Keras' (loss, loss
    scaling for mixed precision, metrics).

    ``variant`` names which AlexNet the graph is (`VARIANTS`: ``"paper"``,
    ``"bvlc_alexnet"``, ``"caffenet"``, ``"torchvision"``); it is part of the saved
    config, so it survives ``model.save`` and `keras.models.load_model`.
    """

    def __init__(self, *args, variant="paper", **kwargs):
        super().__init__(*args, **kwargs)
        self.variant = variant

    def get_config(self):
        config = super().get_config()
        config["variant"] = self.variant
        return config

    def compile(self, optimizer="rmsprop", **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        colocate_optimizer_slots(self.optimizer)

    def compile_from_config(self, config):
        # Keras skips compiling a loaded model whose class overrides `compile` unless it
        # also overrides this; what it would do is exactly right here.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)


def _weight_stddev(weight_stddev, layer):
    if isinstance(weight_stddev, dict):
        weight_stddev = weight_stddev.get(layer, weight_stddev.get("default", 0.01))
    return weight_stddev if weight_stddev == "he" else float(weight_stddev)


# The published ImageNet AlexNets (REFERENCE.md, "Published trained AlexNets"): each
# variant is a set of defaults for `AlexNet`'s arguments plus two structural facts that
# are not arguments (where the LRN window may reach, and where dropout sits).
# - "paper": §3.5 as above. Each tower normalises its own maps (the paper's GPUs).
# - "bvlc_alexnet": Caffe's models/bvlc_alexnet/deploy.prototxt. conv->relu->norm->pool;
#   `group: 2` in conv2, conv4, conv5; LRN local_size 5, alpha 1e-4, beta 0.75, k 1, and
#   Caffe divides alpha by local_size: our alpha 2e-5, bias 1. Caffe's LRN layer is not
#   grouped: it normalises across all maps of both towers. Initialisation of its
#   train_val.prototxt: N(0, 0.01) (fc6, fc7: 0.005), biases 0.1 where the paper has 1.
# - "caffenet": models/bvlc_reference_caffenet: the same with conv->relu->pool->norm.
# - "torchvision": torchvision.models.alexnet ("one weird trick", Krizhevsky 2014):
#   64/192/384/256/256 kernels, conv1 padded by 2 on 224x224 inputs, no LRN, no groups,
#   Dropout -> fc6 -> ReLU -> Dropout -> fc7 -> ReLU -> fc8. Its AdaptiveAvgPool2d((6, 6))
#   is the identity on the 6x6 pool5 of a 224 input; other sizes are refused with the top.
#   Its initialisation (PyTorch's defaults) is not reproduced: the variant is for
#   converted weights; from scratch it starts like the paper.
VARIANTS = {
    "paper": dict(
        input_shape=(227, 227, 3), conv_filters=(96, 256, 384, 384, 256), conv1_padding=0,
        grouping="towers", lrn=True, lrn_depth_radius=2, lrn_bias=2.0, lrn_alpha=1e-4,
        lrn_beta=0.75, lrn_order="lrn_pool", weight_stddev=0.01, positive_bias=1.0,
        lrn_across_towers=False, dropout_after=("fc6", "fc7"),
    ),
    "bvlc_alexnet": dict(
        input_shape=(227, 227, 3), conv_filters=(96, 256, 384, 384, 256), conv1_padding=0,
        grouping="towers", lrn=True, lrn_depth_radius=2, lrn_bias=1.0, lrn_alpha=2e-5,
        lrn_beta=0.75, lrn_order="lrn_pool",
        weight_stddev={"fc6": 0.005, "fc7": 0.005, "default": 0.01}, positive_bias=0.1,
        lrn_across_towers=True, dropout_after=("fc6", "fc7"),
    ),
    "torchvision": dict(
        input_shape=(224, 224, 3), conv_filters=(64, 192, 384, 256, 256), conv1_padding=2,
        grouping="none", lrn=False, lrn_depth_radius=2, lrn_bias=2.0, lrn_alpha=1e-4,
        lrn_beta=0.75, lrn_order="lrn_pool", weight_stddev=0.01, positive_bias=1.0,
        lrn_across_towers=False, dropout_after=("pool5", "fc6"),
    ),
}
VARIANTS["caffenet"] = dict(VARIANTS["bvlc_alexnet"], lrn_order="pool_lrn")
LRN_ORDERS = ("lrn_pool", "pool_lrn")
# torchvision's AdaptiveAvgPool2d((6, 6)) before fc6.
TORCHVISION_POOL5 = 6


def variant_defaults(variant):
    """The argument defaults `AlexNet` uses for ``variant`` (a copy of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {tuple(VARIANTS)}, got {variant!r}.")
    return dict(VARIANTS[variant])


def _resolve_variant(weights, variant):
    """``variant``, or the variant the ``weights`` file or directory holds."""
    if variant is None and weights is not None and not str(weights).endswith(".weights.h5"):
        from keras_alexnet import weight_files

        variant = weight_files.weights_variant(weights)
    return "paper" if variant is None else variant


def AlexNet(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    grouping=None,
    devices=None,
    lrn_depth_radius=None,
    lrn_bias=None,
    lrn_alpha=None,
    lrn_beta=None,
    lrn=None,
    lrn_implementation="matmul",
    weight_stddev=None,
    positive_bias=None,
    dropout=0.5,
    fc_units=4096,
    kernel_regularizer=None,
    input_scale=1.0,
    seed=None,
    name=None,
    variant=None,
    lrn_order=None,
    conv_filters=None,
    conv1_padding=None,
):
    """Builds the paper's AlexNet (NIPS 2012, §3.5 and Fig. 2), or one of the published
    ImageNet AlexNets, as a `keras.Model`.

    Inputs are RGB crops in ``[0, 255]`` with the training mean subtracted (the paper's
    only preprocessing, §2); see `keras_alexnet.data`. The paper states 224x224 inputs,
    but 11x11 stride-4 kernels give its 55x55 conv1 maps only on 227x227 (as in Caffe's
    bvlc_alexnet), so 227 is the default. The other variants take their source's input
    (``keras_alexnet.convert`` writes how to make it): Caffe's are 227x227 BGR minus the
    mean, torchvision's 224x224 normalised RGB.

    Arguments left at None take the variant's value (`VARIANTS`); an explicit value
    overrides it.

    Args:
        include_top: whether to include fc6, fc7 and fc8 (with their dropout).
        weights: None (random initialisation); the path of a ``.weights.h5`` file saved
            from a model of the same layout; a directory written by
            ``python -m keras_alexnet.convert`` (or its ``model.keras``); or a published
            weights file that `keras_alexnet.convert` reads (``.caffemodel``, Guerzhoy's
            ``.npy``, torchvision's ``.pth``). Nothing is downloaded.
        input_tensor: optional Keras tensor to use as the input.
        input_shape: input shape; default ``(227, 227, 3)`` (``(224, 224, 3)`` for
            ``variant="torchvision"``). Smaller inputs work (e.g. ``(67, 67, 3)`` for
            tests) as long as pool5 is at least 1x1 (torchvision's top needs 6x6).
        pooling: with ``include_top=False``: None (pool5 maps), ``"avg"`` or ``"max"``.
        classes: number of classes of fc8. Default 1000.
        classifier_activation: activation of fc8, default ``"softmax"``; None for logits.
        grouping: ``"towers"`` (the paper: two towers of plain convs, one per device),
            ``"grouped"`` (the same function, grouped convs on one device) or ``"none"``
            (one tower without groups). Default: the variant's (``"towers"`` for the
            paper and Caffe's nets, ``"none"`` for torchvision's, which
            has no groups). Caffe's LRN normalises across both towers' maps: in the
            Caffe variants' tower layout one LRN (``lrn1``) reads both towers
            (``lrn1_input``) and hands each its half (``lrn1_a``, ``lrn1_b``).
        devices: with ``grouping="towers"``: two device names for towers a and b, e.g.
            ``("/GPU:0", "/GPU:1")``. Default `default_devices()`.
        lrn_depth_radius, lrn_bias, lrn_alpha, lrn_beta: local response normalisation
            (§3.3: n=5, k=2, alpha=1e-4, beta=0.75). Krizhevsky's 2012 code uses
            ``lrn_alpha=2e-5``; Caffe's bvlc_alexnet ``lrn_alpha=2e-5, lrn_bias=1``
            (the Caffe variants' defaults).
        lrn: False removes both LRN layers (the paper's ablation, §3.3). Default: True,
            False for torchvision's.
        lrn_implementation: ``"matmul"`` (default, the fast path) or ``"tf_nn"`` (the
            reference, `tf.nn.local_response_normalization`): the same function, see
            `LocalResponseNormalization`.
        weight_stddev: standard deviation of the zero-mean Gaussian that initialises
            every kernel (§5: 0.01), or a dict from paper layer name (``"conv3"``, ...,
            and optionally ``"default"``) to its standard deviation. A value ``"he"``
            draws N(0, 2 / fan_in) instead (He et al., 2015), a non-paper option.
        positive_bias: initial bias of conv2, conv4, conv5, fc6 and fc7 (§5: 1; Caffe's
            bvlc_alexnet uses 0.1). conv1, conv3 and fc8 biases start at 0.
        dropout: dropout rate of the two dropout layers (§4.2: 0.5), after fc6 and fc7
            (``drop6``, ``drop7``); torchvision's come before fc6 and fc7 (``drop5``,
            ``drop6``: ``dropN`` follows layer N).
        fc_units: width of fc6 and fc7 (4096 in the paper; smaller for tiny runs).
        kernel_regularizer: regulariser for every kernel (the recipe's weight decay).
        input_scale: the input is multiplied by this first (a ``Rescaling`` layer named
            ``input_scale``). 1 (no layer) is the paper: raw mean-subtracted pixels.
        seed: integer seed for the initial weights; None for a random draw.
        name: model name. Default ``"alexnet"`` (``"alexnet_<variant>"`` for the
            published variants).
        variant: ``"paper"`` (the default, the network above), ``"bvlc_alexnet"``,
            ``"caffenet"`` or ``"torchvision"`` (see `VARIANTS` and REFERENCE.md). With
            ``weights`` given and no variant, the variant of the weights. Kept in the
            model (``model.variant``) through save and load.
        lrn_order: ``"lrn_pool"`` (conv -> ReLU -> LRN -> pool: the paper, bvlc_alexnet)
            or ``"pool_lrn"`` (conv -> ReLU -> pool -> LRN: CaffeNet).
        conv_filters: the five conv layers' kernel counts; default the variant's
            (96, 256, 384, 384, 256; torchvision's 64, 192, 384, 256, 256).
        conv1_padding: zeros added on each side before conv1 (a ``ZeroPadding2D`` named
            ``pad1``); default 0 (torchvision's: 2).

    Returns:
        An `AlexNetModel` (a functional `keras.Model`).
    """
    variant = _resolve_variant(weights, variant)
    spec = variant_defaults(variant)
    given = dict(
        input_shape=input_shape, grouping=grouping, lrn=lrn, lrn_depth_radius=lrn_depth_radius,
        lrn_bias=lrn_bias, lrn_alpha=lrn_alpha, lrn_beta=lrn_beta, lrn_order=lrn_order,
        weight_stddev=weight_stddev, positive_bias=positive_bias, conv_filters=conv_filters,
        conv1_padding=conv1_padding,
    )
    spec.update({k: v for k, v in given.items() if v is not None})
    grouping, lrn, lrn_order = spec["grouping"], spec["lrn"], spec["lrn_order"]
    weight_stddev, positive_bias = spec["weight_stddev"], spec["positive_bias"]
    filters = tuple(int(f) for f in spec["conv_filters"])
    if name is None:
        name = "alexnet" if variant == "paper" else f"alexnet_{variant}"
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}.")
    if lrn_order not in LRN_ORDERS:
        raise ValueError(f"lrn_order must be one of {LRN_ORDERS}, got {lrn_order!r}.")
    if len(filters) != 5:
        raise ValueError(f"conv_filters must give 5 kernel counts, got {filters}.")
    if variant == "torchvision" and grouping != "none":
        raise ValueError("torchvision's AlexNet has no groups: grouping must be 'none'.")
    if devices is None:
        devices = default_devices()
    devices = tuple(devices)
    if len(devices) != 2:
        raise ValueError(f"devices must name two devices (towers a and b), got {devices}.")
    towers = grouping == "towers"
    seeds = iter(range(1000)) if seed is None else iter(range(seed, seed + 1000))
    conv_specs = {
        layer: dict(s, filters=f) for (layer, s), f in zip(CONV_LAYERS.items(), filters)
    }
    # Each tower's (or group's) own maps: the paper; all maps: Caffe's (ungrouped) LRN.
    lrn_groups = 1 if spec["lrn_across_towers"] or grouping == "none" else 2

    def kernel_init(layer):
        s = None if seed is None else next(seeds)
        std = _weight_stddev(weight_stddev, layer)
        if std == "he":  # N(0, 2 / fan_in): He et al. 2015, for unit-scale inputs
            return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal", seed=s)
        return keras.initializers.RandomNormal(0.0, std, seed=s)

    def bias_init(layer):
        return keras.initializers.Constant(positive_bias if layer in POSITIVE_BIAS_LAYERS else 0.0)

    def lrn_layer(name, groups=1):
        return LocalResponseNormalization(
            depth_radius=spec["lrn_depth_radius"],
            bias=spec["lrn_bias"],
            alpha=spec["lrn_alpha"],
            beta=spec["lrn_beta"],
            groups=groups,
            implementation=lrn_implementation,
            name=name,
        )

    def pool_layer(name):
        return keras.layers.MaxPooling2D(pool_size=3, strides=2, name=name)

    def after_conv(layer, suffix="", groups=1):
        """The layers after a conv's ReLU: LRN and pooling, in the variant's order."""
        n = layer[-1]
        ops = []
        if lrn and layer in LRN_AFTER:
            ops.append(lrn_layer(f"lrn{n}{suffix}", groups=groups))
        if layer in POOL_AFTER:
            pool = pool_layer(f"{POOL_AFTER[layer]}{suffix}")
            ops.insert(0 if lrn_order == "pool_lrn" else len(ops), pool)
        return ops

    if input_tensor is None:
        inputs = keras.Input(shape=spec["input_shape"], name="image")
    else:
        inputs = input_tensor

    first = inputs
    if input_scale != 1.0:
        first = keras.layers.Rescaling(input_scale, name="input_scale")(inputs)
    if spec["conv1_padding"]:
        first = keras.layers.ZeroPadding2D(spec["conv1_padding"], name="pad1")(first)

    if towers:
        x_a, x_b = first, first
        for layer, cspec in conv_specs.items():
            if not cspec["own_tower"]:
                both = keras.layers.Concatenate(name=f"{layer}_input")([x_a, x_b])
                x_a, x_b = both, both
            # Caffe's LRN (not grouped) needs both towers' maps: it runs on them
            # together (lrn1_input -> lrn1) and each tower takes its half back (lrn1_a).
            cross = spec["lrn_across_towers"] and lrn and layer in LRN_AFTER
            pool_first = lrn_order == "pool_lrn" and layer in POOL_AFTER
            outs = []
            for tower, x, device in (("a", x_a, devices[0]), ("b", x_b, devices[1])):
                ops = [
                    keras.layers.Conv2D(
                        cspec["filters"] // 2,
                        cspec["size"],
                        strides=cspec["stride"],
                        padding=cspec["padding"],
                        activation="relu",
                        kernel_initializer=kernel_init(layer),
                        bias_initializer=bias_init(layer),
                        kernel_regularizer=kernel_regularizer,
                        name=f"{layer}_{tower}",
                    )
                ]
                if not cross:
                    ops += after_conv(layer, suffix=f"_{tower}")
                elif pool_first:
                    ops.append(pool_layer(f"{POOL_AFTER[layer]}_{tower}"))
                for op in ops:
                    x = OnDevice(op, device=device)(x)
                outs.append(x)
            x_a, x_b = outs
            if cross:
                n, half = layer[-1], cspec["filters"] // 2
                both = keras.layers.Concatenate(name=f"lrn{n}_input")([x_a, x_b])
                both = lrn_layer(f"lrn{n}")(both)
                x_a = ChannelSlice(0, half, name=f"lrn{n}_a")(both)
                x_b = ChannelSlice(half, 2 * half, name=f"lrn{n}_b")(both)
                if layer in POOL_AFTER and not pool_first:
                    x_a = OnDevice(pool_layer(f"{POOL_AFTER[layer]}_a"), device=devices[0])(x_a)
                    x_b = OnDevice(pool_layer(f"{POOL_AFTER[layer]}_b"), device=devices[1])(x_b)
        x = keras.layers.Concatenate(name="pool5")([x_a, x_b])
    else:
        x = first
        for layer, cspec in conv_specs.items():
            groups = 2 if grouping == "grouped" and cspec["own_tower"] and layer != "conv1" else 1
            common = dict(
                strides=cspec["stride"],
                padding=cspec["padding"],
                activation="relu",
                kernel_initializer=kernel_init(layer),
                bias_initializer=bias_init(layer),
                kernel_regularizer=kernel_regularizer,
                name=layer,
            )
            if groups > 1:
                x = GroupedConv2D(cspec["filters"], cspec["size"], groups=groups, **common)(x)
            else:
                x = keras.layers.Conv2D(cspec["filters"], cspec["size"], **common)(x)
            # In the paper each GPU normalises its own 48 (128) maps: the grouped layout
            # normalises within each half, the one-tower layout (and Caffe) across all.
            for op in after_conv(layer, groups=lrn_groups):
                x = op(x)

    if include_top:
        if variant == "torchvision" and tuple(x.shape[1:3]) != (TORCHVISION_POOL5,) * 2:
            raise ValueError(
                "torchvision's AlexNet average-pools pool5 to 6x6 (AdaptiveAvgPool2d), the "
                f"identity only when pool5 is 6x6 (224x224 inputs); pool5 here is "
                f"{tuple(x.shape[1:3])}. Use a 224x224 input or include_top=False."
            )
        x = keras.layers.Flatten(name="flatten")(x)
        if "pool5" in spec["dropout_after"]:
            x = keras.layers.Dropout(dropout, name="drop5")(x)
        for layer in ("fc6", "fc7"):
            x = keras.layers.Dense(
                fc_units,
                activation="relu",
                kernel_initializer=kernel_init(layer),
                bias_initializer=bias_init(layer),
                kernel_regularizer=kernel_regularizer,
                name=layer,
            )(x)
            if layer in spec["dropout_after"]:
                x = keras.layers.Dropout(dropout, name=f"drop{layer[-1]}")(x)
        x = keras.layers.Dense(
            classes,
            kernel_initializer=kernel_init("fc8"),
            bias_initializer=bias_init("fc8"),
            kernel_regularizer=kernel_regularizer,
            name="fc8",
        )(x)
        if classifier_activation is not None:
            # Softmax in float32 even under mixed precision, for a stable loss.
            x = keras.layers.Activation(
                classifier_activation, dtype="float32", name="predictions"
            )(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)

    model = AlexNetModel(inputs, x, name=name, variant=variant)
    if weights is not None:
        if str(weights).endswith(".weights.h5"):
            model.load_weights(weights)
        else:
            from keras_alexnet import weight_files

            weight_files.load_weights_into(model, weights)
    return model


def outputs_probabilities(model):
    """Whether ``model`` ends in a softmax (True) or gives logits (False).

    A last layer that declares an activation other than softmax (``fc8`` of
    ``AlexNet(classifier_activation=None)``) means logits; a last layer without an
    activation attribute is taken to give probabilities.
    """
    activation = getattr(model.layers[-1], "activation", None)
    if activation is None:
        return True
    return getattr(activation, "__name__", "") == "softmax"


def paper_layer(layer_name):
    """Maps a Keras layer name to the paper layer it belongs to (conv1_a -> conv1)."""
    base = layer_name.split("_")[0]
    return base if base in PAPER_LAYERS else None


def _layers(model):
    """Pairs ``(layer, outer)``: each leaf layer of the model, with `OnDevice` wrappers
    replaced by what they wrap, and the layer the model calls (whose output is known)."""
    for outer in model.layers:
        yield (outer.layer if isinstance(outer, OnDevice) else outer), outer


def layer_table(model):
    """The paper-style per-layer table of a built AlexNet.

    Returns:
        A list of dicts, one per paper layer (conv1 ... fc8) in order, with ``layer``,
        ``output_shape`` (the layer's output with both towers together, before pooling),
        ``params`` (weights + biases, both towers) and ``neurons`` (units of the output).
    """
    rows = {}
    for layer, outer in _layers(model):
        base = paper_layer(layer.name)
        if base is None or layer.name.startswith(("lrn", "pool")):
            continue
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense, GroupedConv2D)):
            continue
        shape = tuple(outer.output.shape[1:])
        row = rows.setdefault(base, {"layer": base, "output_shape": None, "params": 0, "neurons": 0})
        row["params"] += int(layer.count_params())
        row["neurons"] += int(np.prod(shape))
        if row["output_shape"] is None:
            row["output_shape"] = shape
        else:  # a second tower: its channels add up
            row["output_shape"] = row["output_shape"][:-1] + (row["output_shape"][-1] + shape[-1],)
    return [rows[name] for name in PAPER_LAYERS if name in rows]


def format_layer_table(model):
    """The `layer_table` as text, with a total row, like the paper's description."""
    rows = layer_table(model)
    lines = [f"{'layer':<7}{'output':>16}{'parameters':>14}{'neurons':>11}"]
    for r in rows:
        shape = "x".join(str(d) for d in r["output_shape"])
        lines.append(f"{r['layer']:<7}{shape:>16}{r['params']:>14,}{r['neurons']:>11,}")
    total_p = sum(r["params"] for r in rows)
    total_n = sum(r["neurons"] for r in rows)
    lines.append(f"{'total':<7}{'':>16}{total_p:>14,}{total_n:>11,}")
    return "\n".join(lines)


def print_layer_table(model):
    """Prints `format_layer_table(model)`."""
    print(format_layer_table(model))


def towers_to_grouped(towers_model, grouped_model):
    """Copies a two-tower model's weights into a ``grouping="grouped"`` model.

    Tower a's kernels become the first half of each fused kernel's output channels and
    tower b's the second half, which is how a grouped convolution orders its groups.
    """
    for name in PAPER_LAYERS[:5]:
        a = towers_model.get_layer(f"{name}_a").layer
        b = towers_model.get_layer(f"{name}_b").layer
        target = grouped_model.get_layer(name)
        target.set_weights(
            [np.concatenate([wa, wb], axis=-1) for wa, wb in zip(a.get_weights(), b.get_weights())]
        )
    for name in PAPER_LAYERS[5:]:
        try:
            grouped_model.get_layer(name).set_weights(towers_model.get_layer(name).get_weights())
        except ValueError:  # include_top=False
            pass


def grouped_to_towers(grouped_model, towers_model):
    """The inverse of `towers_to_grouped`."""
    for name in PAPER_LAYERS[:5]:
        weights = grouped_model.get_layer(name).get_weights()
        for tower, half in (("a", 0), ("b", 1)):
            towers_model.get_layer(f"{name}_{tower}").layer.set_weights(
                [np.split(w, 2, axis=-1)[half] for w in weights]
            )
    for name in PAPER_LAYERS[5:]:
        try:
            towers_model.get_layer(name).set_weights(grouped_model.get_layer(name).get_weights())
        except ValueError:
            pass
