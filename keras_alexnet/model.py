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
(`keras_alexnet.variants.VARIANTS`): Caffe's ``"bvlc_alexnet"`` and ``"caffenet"`` and
torchvision's ``"torchvision"``; `keras_alexnet.convert` reads their weight files into them.
"""

import shutil
import sys

import numpy as np
import keras

from keras_alexnet.keras_compat import TowerTrainStep, colocate_optimizer_slots
from keras_alexnet.backends import on_tensorflow, require_tensorflow
from keras_alexnet.layers import PAPER_LAYERS, ChannelSlice, GroupedConv2D, LocalResponseNormalization, OnDevice
from keras_alexnet.variants import POOL5_HWC, VARIANTS, variant_defaults
from keras_alexnet.weight_readers import ConversionError

# The paper's five conv layers (§3.5; the kernel counts are the variant's `conv_filters`).
# ``reads``: the input image, only its own tower's maps, or both towers' maps (Fig. 2).
CONV_LAYERS = {
    "conv1": dict(size=11, stride=4, padding="valid", reads="image"),
    "conv2": dict(size=5, stride=1, padding="same", reads="own_tower"),
    "conv3": dict(size=3, stride=1, padding="same", reads="both_towers"),
    "conv4": dict(size=3, stride=1, padding="same", reads="own_tower"),
    "conv5": dict(size=3, stride=1, padding="same", reads="own_tower"),
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
LRN_ORDERS = ("lrn_pool", "pool_lrn")
# A per-layer ``weight_stddev`` dict without a "default" entry: the paper's (§5).
PAPER_STDDEV = VARIANTS["paper"]["weight_stddev"]


def default_devices():
    """The paper's placement: the first two GPUs when there are two, else no placement.

    Returns a pair of device names, or ``(None, None)``, meaning the towers run wherever
    the caller runs the model (the one device there is, or each replica's device under a
    `tf.distribute` strategy).
    """
    if not on_tensorflow():
        return (None, None)
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) >= 2:
        return (gpus[0].name, gpus[1].name)
    return (None, None)


# The tower-keeping train step is TensorFlow's (tf.gradients); JAX's and PyTorch's trainers
# have train steps of their own signatures, and place nothing by device name.
_TRAIN_STEP = (TowerTrainStep,) if on_tensorflow() else ()


@keras.saving.register_keras_serializable(package="keras_alexnet")
class AlexNetModel(*_TRAIN_STEP, keras.Model):
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
        if on_tensorflow():
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
        weight_stddev = weight_stddev.get(layer, weight_stddev.get("default", PAPER_STDDEV))
    return weight_stddev if weight_stddev == "he" else float(weight_stddev)


def _resolve_variant(weights, variant):
    """``variant``, or the variant the ``weights`` file or directory holds."""
    if variant is None and weights is not None and not str(weights).endswith(".weights.h5"):
        from keras_alexnet import weight_files

        variant = weight_files.weights_variant(weights)
    return "paper" if variant is None else variant


def _initializers(weight_stddev, positive_bias, seed):
    """``init(layer)``: the ``kernel_initializer`` and ``bias_initializer`` arguments of a
    paper layer (§5), each kernel drawn with the next seed from ``seed`` (None: random)."""
    seeds = iter(range(1000)) if seed is None else iter(range(seed, seed + 1000))

    def init(layer):
        s = None if seed is None else next(seeds)
        std = _weight_stddev(weight_stddev, layer)
        if std == "he":  # N(0, 2 / fan_in): He et al. 2015, for unit-scale inputs
            kernel = keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal", seed=s)
        else:
            kernel = keras.initializers.RandomNormal(0.0, std, seed=s)
        bias = keras.initializers.Constant(positive_bias if layer in POSITIVE_BIAS_LAYERS else 0.0)
        return dict(kernel_initializer=kernel, bias_initializer=bias)

    return init


def per_tower(xs, makers, devices):
    """Applies ``makers`` in turn to each stream of ``xs``. Two streams are the towers:
    ``make("_a")`` builds tower a's layer and ``make("_b")`` tower b's, each run on its
    tower's device; one stream (the one-device layouts) gets one ``make("")``."""
    if len(xs) == 1:
        x = xs[0]
        for make in makers:
            x = make("")(x)
        return [x]
    outs = []
    for x, tower, device in zip(xs, "ab", devices):
        for make in makers:
            x = OnDevice(make(f"_{tower}"), device=device)(x)
        outs.append(x)
    return outs


def cross_tower_lrn(xs, make_lrn, name):
    """Caffe's LRN (not grouped) on both towers' maps together: ``{name}_input`` joins
    them, ``{name}`` normalises, ``{name}_a`` and ``{name}_b`` hand each tower its half."""
    half = xs[0].shape[-1]
    both = keras.layers.Concatenate(name=f"{name}_input")(xs)
    both = make_lrn(name)(both)
    return [ChannelSlice(0, half, name=f"{name}_a")(both),
            ChannelSlice(half, 2 * half, name=f"{name}_b")(both)]


def conv_block(xs, layer, filters, grouping, devices, lrn, lrn_order, across_towers, make_lrn,
               conv_args):
    """One conv layer of the table with its ReLU, then its LRN and pooling (if any, in
    ``lrn_order``) on each stream; ``make_lrn(name)`` builds an LRN layer."""
    spec = CONV_LAYERS[layer]
    if len(xs) == 2 and spec["reads"] == "both_towers":
        both = keras.layers.Concatenate(name=f"{layer}_input")(xs)
        xs = [both, both]
    grouped = grouping == "grouped" and spec["reads"] == "own_tower"

    def conv(suffix):
        args = dict(strides=spec["stride"], padding=spec["padding"], activation="relu",
                    name=layer + suffix, **conv_args(layer))
        if grouped:
            return GroupedConv2D(filters, spec["size"], groups=2, **args)
        return keras.layers.Conv2D(filters // 2 if suffix else filters, spec["size"], **args)

    n = layer[-1]
    after = []
    if lrn and layer in LRN_AFTER:
        after.append("lrn")
    if layer in POOL_AFTER:
        after.insert(0 if lrn_order == "pool_lrn" else len(after), "pool")
    makers = {"lrn": lambda suffix: make_lrn(f"lrn{n}{suffix}"),
              "pool": lambda suffix: keras.layers.MaxPooling2D(3, 2, name=POOL_AFTER[layer] + suffix)}
    if len(xs) == 2 and across_towers and "lrn" in after:
        i = after.index("lrn")
        xs = per_tower(xs, [conv] + [makers[op] for op in after[:i]], devices)
        xs = cross_tower_lrn(xs, make_lrn, f"lrn{n}")
        return per_tower(xs, [makers[op] for op in after[i + 1:]], devices)
    return per_tower(xs, [conv] + [makers[op] for op in after], devices)


def dense_block(x, layer, units, dropout, dropout_after, dense_args, activation="relu"):
    """A fully connected layer (with its dropout, ``drop<N>``, if the variant has one)."""
    x = keras.layers.Dense(units, activation=activation, name=layer, **dense_args(layer))(x)
    if layer in dropout_after:
        x = keras.layers.Dropout(dropout, name=f"drop{layer[-1]}")(x)
    return x


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
    file_hash=None,
):
    """Builds the paper's AlexNet (NIPS 2012, §3.5 and Fig. 2), or one of the published
    ImageNet AlexNets, as a `keras.Model`.

    Inputs are RGB crops in ``[0, 255]`` with the training mean subtracted (the paper's
    only preprocessing, §2); see `keras_alexnet.preprocessing`. The paper states 224x224 inputs,
    but 11x11 stride-4 kernels give its 55x55 conv1 maps only on 227x227 (as in Caffe's
    bvlc_alexnet), so 227 is the default. The other variants take their source's input
    (``keras_alexnet.convert`` writes how to make it): Caffe's are 227x227 BGR minus the
    mean, torchvision's 224x224 normalised RGB.

    Arguments left at None take the variant's value (`keras_alexnet.variants.VARIANTS`); an explicit value
    overrides it.

    Args:
        include_top: whether to include fc6, fc7 and fc8 (with their dropout).
        weights: None (random initialisation); ``"imagenet"`` (Caffe's bvlc_alexnet) or
            another name in `keras_alexnet.pretrained.WEIGHTS` (``"bvlc_alexnet"``,
            ``"caffenet"``, ``"torchvision"``), or an http(s) URL of a weights file:
            downloaded once, verified, converted once and cached
            (`pretrained_dir`); the path of a ``.weights.h5`` file saved
            from a model of the same layout; a directory written by
            ``python -m keras_alexnet.convert`` (or its ``model.keras``); or a published
            weights file that `keras_alexnet.convert` reads (``.caffemodel``, Guerzhoy's
            ``.npy``, torchvision's ``.pth``). With ``include_top=False``, or ``classes``
            other than the weights', every layer but fc8 is loaded (fc8 keeps its
            initialisation).
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
            (`LocalResponseNormalization`); default the variant's (the paper's §3.3
            values, Caffe's for its variants).
        lrn: False removes both LRN layers (the paper's ablation, §3.3). Default: True,
            False for torchvision's.
        lrn_implementation: ``"matmul"`` (default, the fast path) or ``"tf_nn"`` (the
            reference, `tf.nn.local_response_normalization`): the same function, see
            `LocalResponseNormalization`.
        weight_stddev: standard deviation of the zero-mean Gaussian that initialises
            every kernel (default the variant's; the paper's §5), or a dict from paper
            layer name (``"conv3"``, ..., and ``"default"``) to it. A value ``"he"``
            draws N(0, 2 / fan_in) instead (He et al., 2015), a non-paper option.
        positive_bias: initial bias of conv2, conv4, conv5, fc6 and fc7 (default the
            variant's; the paper's §5). conv1, conv3 and fc8 biases start at 0.
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
            ``"caffenet"`` or ``"torchvision"`` (see `keras_alexnet.variants.VARIANTS`). With
            ``weights`` given and no variant, the variant of the weights. Kept in the
            model (``model.variant``) through save and load.
        lrn_order: ``"lrn_pool"`` (conv -> ReLU -> LRN -> pool: the paper, bvlc_alexnet)
            or ``"pool_lrn"`` (conv -> ReLU -> pool -> LRN: CaffeNet).
        conv_filters: the five conv layers' kernel counts; default the variant's
            (96, 256, 384, 384, 256; torchvision's 64, 192, 384, 256, 256).
        conv1_padding: zeros added on each side before conv1 (a ``ZeroPadding2D`` named
            ``pad1``); default 0 (torchvision's: 2).
        file_hash: with a URL as ``weights``: the file's ``"sha256:<hex>"`` (or
            ``"sha1:<hex>"``), as its publisher states it; without one the download is
            not verified (a warning says so).

    Returns:
        An `AlexNetModel` (a functional `keras.Model`).
    """
    # Imported here, not at the top: `python -m keras_alexnet.pretrained` must not find
    # itself already imported by the package (runpy warns).
    entry = None
    if weights is not None:
        from keras_alexnet import pretrained

        entry = pretrained.named(weights, file_hash)
    if entry is not None:
        weights = pretrained_dir(entry)
    variant = _resolve_variant(weights, variant)
    spec = variant_defaults(variant)
    given = dict(
        input_shape=input_shape, grouping=grouping, lrn=lrn, lrn_depth_radius=lrn_depth_radius,
        lrn_bias=lrn_bias, lrn_alpha=lrn_alpha, lrn_beta=lrn_beta, lrn_order=lrn_order,
        weight_stddev=weight_stddev, positive_bias=positive_bias, conv_filters=conv_filters,
        conv1_padding=conv1_padding,
    )
    spec.update({k: v for k, v in given.items() if v is not None})
    grouping, filters = spec["grouping"], tuple(int(f) for f in spec["conv_filters"])
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}.")
    if spec["lrn_order"] not in LRN_ORDERS:
        raise ValueError(f"lrn_order must be one of {LRN_ORDERS}, got {spec['lrn_order']!r}.")
    if len(filters) != 5:
        raise ValueError(f"conv_filters must give 5 kernel counts, got {filters}.")
    if variant == "torchvision" and grouping != "none":
        raise ValueError("torchvision's AlexNet has no groups: grouping must be 'none'.")
    if devices is not None and any(devices):
        require_tensorflow(f"AlexNet(devices={devices}) (the towers' tf.device placement)",
                           "Leave devices out; on JAX keras_alexnet.backends.paper_model_parallel() splits "
                           "the grouping='grouped' network over two devices.")
    devices = tuple(default_devices() if devices is None else devices)
    if len(devices) != 2:
        raise ValueError(f"devices must name two devices (towers a and b), got {devices}.")
    init = _initializers(spec["weight_stddev"], spec["positive_bias"], seed)

    def layer_args(layer):
        return dict(init(layer), kernel_regularizer=kernel_regularizer)

    # In the paper each GPU normalises its own maps: each tower's LRN sees its own, the
    # grouped layout's LRN normalises each half alone. Caffe's LRN, and the one-tower
    # layout's, see all maps.
    lrn_groups = 2 if grouping == "grouped" and not spec["lrn_across_towers"] else 1

    def make_lrn(layer_name):
        return LocalResponseNormalization(
            spec["lrn_depth_radius"], spec["lrn_bias"], spec["lrn_alpha"], spec["lrn_beta"],
            groups=lrn_groups, implementation=lrn_implementation, name=layer_name,
        )

    inputs = keras.Input(shape=spec["input_shape"], name="image") if input_tensor is None else input_tensor
    x = inputs
    if input_scale != 1.0:
        x = keras.layers.Rescaling(input_scale, name="input_scale")(x)
    if spec["conv1_padding"]:
        x = keras.layers.ZeroPadding2D(spec["conv1_padding"], name="pad1")(x)
    xs = [x, x] if grouping == "towers" else [x]
    for layer, f in zip(CONV_LAYERS, filters):
        xs = conv_block(xs, layer, f, grouping, devices, spec["lrn"], spec["lrn_order"],
                        spec["lrn_across_towers"], make_lrn, layer_args)
    x = keras.layers.Concatenate(name="pool5")(xs) if len(xs) == 2 else xs[0]

    if include_top:
        if variant == "torchvision" and tuple(x.shape[1:3]) != POOL5_HWC[:2]:
            raise ValueError(
                "torchvision's AlexNet average-pools pool5 to 6x6 (AdaptiveAvgPool2d), the "
                f"identity only when pool5 is 6x6 (224x224 inputs); pool5 here is "
                f"{tuple(x.shape[1:3])}. Use a 224x224 input or include_top=False."
            )
        x = keras.layers.Flatten(name="flatten")(x)
        if "pool5" in spec["dropout_after"]:
            x = keras.layers.Dropout(dropout, name="drop5")(x)
        for layer in ("fc6", "fc7"):
            x = dense_block(x, layer, fc_units, dropout, spec["dropout_after"], layer_args)
        x = dense_block(x, "fc8", classes, dropout, (), layer_args, activation=None)
        if classifier_activation is not None:
            # Softmax in float32 even under mixed precision, for a stable loss.
            x = keras.layers.Activation(classifier_activation, dtype="float32", name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)

    if name is None:
        name = "alexnet" if variant == "paper" else f"alexnet_{variant}"
    model = AlexNetModel(inputs, x, name=name, variant=variant)
    if weights is not None:
        if str(weights).endswith(".weights.h5"):
            model.load_weights(weights)
        else:
            from keras_alexnet import weight_files

            weight_files.load_weights_into(model, weights)
    return model


# ---------------------------------------------------------------------------------------
# Published weights: converted by this builder, once, into keras_alexnet.pretrained's cache.


def from_keras_weights(variant, keras_weights, where):
    """A model of ``variant`` holding converted weights ({layer: [kernel, bias]}), sized
    from them: fc8's classes and fc6's width (4096 in every published net; a fine-tuned
    net may differ); every other shape must be the variant's."""
    from keras_alexnet import weight_files

    classes = int(np.size(keras_weights["fc8"][1]))
    fc_units = int(np.size(keras_weights["fc6"][1]))
    model = AlexNet(variant=variant, classes=classes, fc_units=fc_units, seed=0)
    return weight_files.assign_weights(model, keras_weights, where)


def pretrained_dir(entry, progressbar=True):
    """The converted model directory of published weights (a
    `keras_alexnet.pretrained.PublishedWeights`): downloaded and verified once
    (`keras_alexnet.pretrained.fetch_file_locked`), converted once, both under the cache
    entry's lock, so two processes asking at once share one download and one conversion."""
    from keras_alexnet import pretrained, run_files, weight_files

    out = pretrained.converted(entry)
    if out is not None:
        return out
    with pretrained.lock(entry):
        out = pretrained.converted(entry)
        if out is not None:  # another process converted it while this one waited
            return out
        file = pretrained.fetch_file_locked(entry, progressbar)
        print(f"Converting {file} into a Keras model directory (once) ...", file=sys.stderr, flush=True)
        try:
            variant, keras_weights = weight_files.read_keras_weights(file, entry.variant or None)
            model = from_keras_weights(variant, keras_weights, str(file))
        except ConversionError as e:
            # An unverified file (a URL without a hash) that is not what its name says is
            # not kept: the next call downloads again instead of failing on it forever.
            kept = bool(entry.hash)
            if not kept:
                file.unlink(missing_ok=True)
            raise pretrained.WeightsError(
                f"{e} (downloaded from {', '.join(pretrained.candidate_urls(entry))}; "
                + (f"it has the expected hash, so it stays at {file})" if kept else "removed)")) from e
        out = pretrained.model_dir_path(entry)
        shutil.rmtree(out, ignore_errors=True)  # what a conversion killed midway left
        source = {"format": entry.format, "name": entry.name, "weights": str(file),
                  "urls": pretrained.candidate_urls(entry), "hash": entry.hash or None,
                  "sha256": pretrained.file_hash_of(file), "variant": variant,
                  "published_top1": entry.top1, "published_top5": entry.top5,
                  "accuracy_source": entry.accuracy_source or None}
        return run_files.write_model_dir(out, model, preprocessing=pretrained.preprocessing(entry.format),
                                         source=source)


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
