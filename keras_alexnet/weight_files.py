"""The published AlexNets' weights mapped into this package's models: which layers of a
file are AlexNet's, their layouts converted to Keras', and set into a built model.

The files are read by `keras_alexnet.weight_readers` (no framework, no code run). Each
layout change is a small named rule (`oihw_to_hwio`, `out_in_to_in_out`,
`chw_rows_to_hwc_rows`, `split_groups`). `load_weights_into` sets a file's weights into
a built AlexNet (what ``AlexNet(weights=FILE_or_DIR)`` does), checked completely before
anything is set; `keras_alexnet.convert` builds the models and writes model directories.
Bad files raise `ConversionError` naming the file, the layer and the shapes.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from keras_alexnet.layers import PAPER_LAYERS
from keras_alexnet.variants import POOL5_HWC, VARIANTS
from keras_alexnet.weight_readers import (
    ConversionError,
    load_npy_dict,
    load_torch_state_dict,
    read_caffemodel,
    read_prototxt,
)

CAFFE_VARIANTS = ("bvlc_alexnet", "caffenet")
CONV_NAMES = PAPER_LAYERS[:5]


# ---------------------------------------------------------------------------------------
# Which AlexNet a Caffe net is.


def detect_variant(layers):
    """``"bvlc_alexnet"`` (LRN before pooling), ``"caffenet"`` (pooling before LRN), or
    None when the layer list holds no LRN layer (e.g. only the weight layers).

    Follows the graph: what produced the first LRN layer's input.
    """
    for i, layer in enumerate(layers):
        if layer.type != "LRN" or not layer.bottom:
            continue
        blob = layer.bottom[0]
        for previous in reversed(layers[:i]):
            if blob in previous.top:
                if previous.type == "Pooling":
                    return "caffenet"
                if previous.type in ("Convolution", "ReLU"):
                    return "bvlc_alexnet"
                break
        # No producer found by name: fall back to the order of the layer list.
        kinds = [l.type for l in layers[:i]]
        return "caffenet" if "Pooling" in kinds else "bvlc_alexnet"
    return None


def _caffe_lrn():
    """bvlc_alexnet's LRN in Caffe's own units: Caffe divides its alpha by local_size."""
    v = VARIANTS["bvlc_alexnet"]
    size = 2 * v["lrn_depth_radius"] + 1
    return {"local_size": float(size), "alpha": v["lrn_alpha"] * size, "beta": v["lrn_beta"],
            "k": v["lrn_bias"]}


CAFFE_LRN = _caffe_lrn()


def _check_prototxt_lrn(layers, where):
    for layer in layers:
        if layer.type != "LRN":
            continue
        p = layer.params.get("lrn_param", {})
        got = {k: float(p.get(k, CAFFE_LRN[k] if k != "alpha" else 1.0)) for k in CAFFE_LRN}
        if p.get("norm_region", "ACROSS_CHANNELS") != "ACROSS_CHANNELS" or any(
            abs(got[k] - CAFFE_LRN[k]) > 1e-9 for k in CAFFE_LRN
        ):
            raise ConversionError(
                f"{where}: layer {layer.name!r}: LRN {got} is not bvlc_alexnet's "
                f"{CAFFE_LRN} (across channels); this converter builds only that LRN."
            )


# ---------------------------------------------------------------------------------------
# Layout rules. Caffe and PyTorch: conv OIHW (input depth per group), FC (out, in), pool5
# flattened (C, H, W). Keras: HWIO, (in, out), Flatten of NHWC (H, W, C).


def oihw_to_hwio(kernel):
    """Conv kernel (out, in, h, w) -> (h, w, in, out). A grouped blob's ``in`` is already
    the per-group depth, as in `GroupedConv2D`'s kernel."""
    return np.ascontiguousarray(np.transpose(kernel, (2, 3, 1, 0)))


def out_in_to_in_out(kernel):
    """Dense kernel (out, in) -> (in, out)."""
    return np.ascontiguousarray(np.transpose(kernel))


def chw_rows_to_hwc_rows(kernel, shape_hwc):
    """Rows of an (in, out) fc6 kernel from Caffe/PyTorch's (C, H, W) flatten order to
    Keras' Flatten of NHWC, (H, W, C). ``shape_hwc`` is pool5's (H, W, C)."""
    h, w, c = shape_hwc
    out = kernel.shape[1]
    return np.ascontiguousarray(
        kernel.reshape(c, h, w, out).transpose(1, 2, 0, 3).reshape(h * w * c, out)
    )


def split_groups(array, groups=2):
    """Splits a kernel or bias along its last (output) axis into the towers' parts: the
    first half is tower a (group 0), as in a grouped convolution."""
    return np.split(array, groups, axis=-1)


# ---------------------------------------------------------------------------------------
# Source weights -> "Keras weights": {layer: [kernel, bias]} for the one-device grouped
# layout (conv HWIO with per-group input, FC (in, out), fc6 rows (H, W, C)).


def _squeeze_to(array, ndim):
    shape = array.shape
    while len(shape) > ndim and shape[0] == 1:
        shape = shape[1:]
    return array.reshape(shape)


def _raw_shapes(raw):
    return {k: tuple(tuple(a.shape) for a in v) for k, v in raw.items()}



def _keras_from_oihw(raw, where):
    """Caffe / PyTorch layer arrays -> Keras weights."""
    out = {}
    for name, arrays in raw.items():
        if len(arrays) != 2:
            raise ConversionError(
                f"{where}: layer {name!r} has {len(arrays)} blobs; expected 2 (weights, bias)."
            )
        w, b = arrays
        b = _squeeze_to(b, 1)
        if name in CONV_NAMES:
            if w.ndim != 4:
                raise ConversionError(f"{where}: layer {name!r}: conv weights of shape {w.shape}.")
            out[name] = [oihw_to_hwio(w), b]
        else:
            w = _squeeze_to(w, 2)
            if w.ndim != 2:
                raise ConversionError(f"{where}: layer {name!r}: FC weights of shape {w.shape}.")
            w = out_in_to_in_out(w)
            if name == "fc6":
                if w.shape[0] != int(np.prod(POOL5_HWC)):
                    raise ConversionError(
                        f"{where}: layer 'fc6': weights {arrays[0].shape} read "
                        f"{w.shape[0]} inputs; the model's pool5 {POOL5_HWC} gives "
                        f"{int(np.prod(POOL5_HWC))}."
                    )
                w = chw_rows_to_hwc_rows(w, POOL5_HWC)
            out[name] = [w, b]
    return out


def _select_layers(found, where):
    """The paper's layers from ``found`` ({name: arrays}); a missing layer is an error."""
    missing = [n for n in PAPER_LAYERS if n not in found]
    if missing:
        listing = ", ".join(f"{k} {s}" for k, s in _raw_shapes(found).items()) or "none"
        raise ConversionError(
            f"{where}: missing layer(s) {', '.join(missing)} of AlexNet; the file's weight "
            f"layers are: {listing}."
        )
    return {n: found[n] for n in PAPER_LAYERS}


def keras_weights_from_model(model):
    """The Keras weights of an AlexNet model (tower halves joined)."""
    names = {layer.name for layer in model.layers}
    out = {}
    for name in PAPER_LAYERS:
        if f"{name}_a" in names:
            a = _leaf(model.get_layer(f"{name}_a")).get_weights()
            b = _leaf(model.get_layer(f"{name}_b")).get_weights()
            out[name] = [np.concatenate([x, y], axis=-1) for x, y in zip(a, b)]
        elif name in names:
            out[name] = model.get_layer(name).get_weights()
    return out


def _leaf(layer):
    from keras_alexnet.layers import OnDevice

    return layer.layer if isinstance(layer, OnDevice) else layer


def _targets(model):
    """{paper layer: [(keras layer, part index or None)]} of a model."""
    names = {layer.name for layer in model.layers}
    targets = {}
    for name in PAPER_LAYERS:
        if f"{name}_a" in names:
            targets[name] = [(_leaf(model.get_layer(f"{name}_{t}")), i) for i, t in enumerate("ab")]
        elif name in names:
            targets[name] = [(model.get_layer(name), None)]
    return targets


def assign_weights(model, weights, where, keep_initial=()):
    """Sets ``weights`` ({layer: [kernel, bias]}, one-device layout) into ``model``.

    Every shape is checked before any weight is set, so a failure leaves the model as
    it was. Tower layouts take the halves of each layer (`split_groups`). Layers named in
    ``keep_initial`` are left as they are.
    """
    plan = []
    targets = _targets(model)
    for name, parts in targets.items():
        if name in keep_initial:
            continue
        if name not in weights:
            raise ConversionError(f"{where}: no weights for layer {name!r}.")
        arrays = weights[name]
        pieces = [split_groups(a, len(parts)) for a in arrays] if len(parts) > 1 else [[a] for a in arrays]
        for layer, index in parts:
            values = [p[index or 0] for p in pieces]
            expected = [tuple(v.shape) for v in layer.weights]
            got = [tuple(v.shape) for v in values]
            if expected != got:
                full = [tuple(a.shape) for a in arrays]
                raise ConversionError(
                    f"{where}: layer {name!r}: the file's weights {full} (Keras layout) do "
                    f"not fit {model.name}'s {layer.name} {expected}"
                    + (" (each tower takes half the output channels)" if len(parts) > 1 else "")
                    + "."
                )
            plan.append((layer, values))
    for layer, values in plan:
        layer.set_weights(values)
    return model


# ---------------------------------------------------------------------------------------
# Each format's file -> Keras weights.


def _caffe_weight_layers(layers):
    return {
        layer.name: layer.blobs
        for layer in layers
        if layer.type in ("Convolution", "InnerProduct") and layer.blobs
    }


def resolve_caffe_variant(layers, where, prototxt_layers=None, prototxt=None, variant=None):
    """The Caffe variant: from the prototxt, the caffemodel's own layers, or ``variant``."""
    if variant is not None and variant not in CAFFE_VARIANTS:
        raise ConversionError(f"{where}: variant must be one of {CAFFE_VARIANTS}, got {variant!r}.")
    votes = {}
    if prototxt_layers is not None:
        votes[f"the prototxt {prototxt}"] = detect_variant(prototxt_layers)
    votes["the caffemodel's layer list"] = detect_variant(layers) if layers is not None else None
    votes["--variant"] = variant
    known = {k: v for k, v in votes.items() if v is not None}
    if len(set(known.values())) > 1:
        raise ConversionError(
            f"{where}: the variant is ambiguous: "
            + ", ".join(f"{k} says {v}" for k, v in known.items())
            + "."
        )
    if not known:
        raise ConversionError(
            f"{where}: cannot tell bvlc_alexnet (LRN before pooling) from caffenet (pooling "
            "before LRN): the file holds only the weight layers. Pass --variant bvlc_alexnet "
            "or --variant caffenet (variant=...), or --prototxt with the deploy.prototxt."
        )
    return next(iter(known.values()))


def caffe_keras_weights(weights, prototxt=None, variant=None):
    """Reads a ``.caffemodel``: returns ``(variant, {layer: [kernel, bias]})``."""
    where = str(weights)
    layers = read_caffemodel(weights)
    proto_layers = None
    if prototxt is not None:
        proto_layers = read_prototxt(prototxt)
        _check_prototxt_lrn(proto_layers, str(prototxt))
    variant = resolve_caffe_variant(layers, where, proto_layers, prototxt, variant)
    raw = _select_layers(_caffe_weight_layers(layers), where)
    return variant, _keras_from_oihw(raw, where)


def npy_keras_weights(weights):
    """Guerzhoy's dict -> {layer: [kernel, bias]} (already Keras layouts)."""
    where = str(weights)
    data = load_npy_dict(weights)
    found = {}
    for key, value in data.items():
        name = key.decode("latin1") if isinstance(key, bytes) else str(key)
        if isinstance(value, dict):  # later caffe-tensorflow: {"weights": W, "biases": b}
            value = [value.get("weights", value.get(b"weights")), value.get("biases", value.get(b"biases"))]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, np.ndarray) for v in value):
            raise ConversionError(f"{where}: layer {name!r} is not a [weights, biases] pair of arrays.")
        found[name] = [np.asarray(v, np.float32) for v in value]
    raw = _select_layers(found, where)
    for name, arrays in raw.items():
        if len(arrays) != 2:
            raise ConversionError(f"{where}: layer {name!r} has {len(arrays)} arrays; expected [W, b].")
    return raw


TORCHVISION_KEYS = {
    "conv1": "features.0", "conv2": "features.3", "conv3": "features.6",
    "conv4": "features.8", "conv5": "features.10",
    "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6",
}


def torchvision_keras_weights(weights):
    """torchvision's state dict -> {layer: [kernel, bias]}."""
    where = str(weights)
    state = load_torch_state_dict(weights)
    found = {}
    for name, key in TORCHVISION_KEYS.items():
        if f"{key}.weight" in state and f"{key}.bias" in state:
            found[name] = [np.asarray(state[f"{key}.{p}"], np.float32) for p in ("weight", "bias")]
    if len(found) < len(TORCHVISION_KEYS):
        missing = [f"{n} ({TORCHVISION_KEYS[n]})" for n in TORCHVISION_KEYS if n not in found]
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        raise ConversionError(
            f"{where}: missing layer(s) {', '.join(missing)} of torchvision's AlexNet; the "
            f"file's tensors are: {', '.join(f'{k} {s}' for k, s in list(shapes.items())[:20])}."
        )
    return _keras_from_oihw(found, where)


# ---------------------------------------------------------------------------------------
# AlexNet(weights=...).


def weights_variant(weights):
    """The variant a weights file or model directory holds (for `AlexNet(weights=...)`)."""
    path = Path(weights)
    if path.is_dir():  # a model directory: its model file (keras_alexnet.run_files.CONVERTED_MODEL)
        path = path / "model.keras"
    suffix = path.suffix.lower()
    if suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as z:
                # The model's own config, inside Keras' .keras archive.
                return json.loads(z.read("config.json"))["config"].get("variant", "paper")
        except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            raise ConversionError(f"{path}: not a Keras model file ({e}).") from None
    if suffix == ".caffemodel":
        return resolve_caffe_variant(read_caffemodel(path), str(path))
    if suffix == ".npy":
        return "bvlc_alexnet"
    if suffix in (".pth", ".pt"):
        return "torchvision"
    raise ConversionError(
        f"{path}: unknown weights (a .weights.h5, .keras, model directory, .caffemodel, "
        ".npy or .pth)."
    )


def read_keras_weights(weights, variant=None):
    """A published weights file (``.caffemodel``, Guerzhoy's ``.npy``, torchvision's
    ``.pth``) as ``(variant, {layer: [kernel, bias]})`` in the one-device Keras layout."""
    path = Path(weights)
    suffix = path.suffix.lower()
    if suffix == ".caffemodel":
        return caffe_keras_weights(path, variant=variant)
    if suffix == ".npy":
        variant = variant or "bvlc_alexnet"
        if variant not in CAFFE_VARIANTS:
            raise ConversionError(f"{path}: variant must be one of {CAFFE_VARIANTS}, got {variant!r}.")
        return variant, npy_keras_weights(path)
    if suffix in (".pth", ".pt"):
        if variant not in (None, "torchvision"):
            raise ConversionError(f"{path}: a torchvision file is variant 'torchvision', not {variant!r}.")
        return "torchvision", torchvision_keras_weights(path)
    raise ConversionError(f"{path}: unknown weights (a .caffemodel, .npy or .pth).")


def load_weights_into(model, weights):
    """Loads a model directory, ``.keras`` model, ``.caffemodel``, ``.npy`` or ``.pth``
    into ``model`` (checked completely before anything is set)."""
    import keras

    path = Path(weights)
    where = str(path)
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".keras":
        file = path / "model.keras" if path.is_dir() else path
        source = keras.models.load_model(file, safe_mode=True, compile=False)
        if getattr(source, "variant", "paper") != model.variant:
            raise ConversionError(
                f"{where}: holds variant {getattr(source, 'variant', 'paper')!r}, the model is "
                f"{model.variant!r}."
            )
        keras_weights = keras_weights_from_model(source)
    elif suffix in (".caffemodel", ".npy"):
        # The paper variant has the same shapes but another LRN: refuse, don't guess.
        if model.variant not in CAFFE_VARIANTS:
            raise ConversionError(
                f"{where}: Caffe weights need variant 'bvlc_alexnet' or 'caffenet', the "
                f"model is {model.variant!r}."
            )
        if suffix == ".npy":
            keras_weights = npy_keras_weights(path)
        else:
            _, keras_weights = caffe_keras_weights(path, variant=model.variant)
    elif suffix in (".pth", ".pt"):
        if model.variant != "torchvision":
            raise ConversionError(
                f"{where}: torchvision weights need variant 'torchvision', the model is "
                f"{model.variant!r}."
            )
        keras_weights = torchvision_keras_weights(path)
    else:
        raise ConversionError(f"{where}: unknown weights file type.")
    names = {layer.name for layer in model.layers}
    if "fc8" in names and "fc8" in keras_weights:
        file_classes = int(np.size(keras_weights["fc8"][1]))
        if file_classes != int(model.get_layer("fc8").units):
            # Another classes= (keras.applications' include_top with new classes): the
            # new fc8 keeps its initialisation; every other layer is loaded.
            keras_weights = {k: v for k, v in keras_weights.items() if k != "fc8"}
            return assign_weights(model, keras_weights, where, keep_initial=("fc8",))
    return assign_weights(model, keras_weights, where)

