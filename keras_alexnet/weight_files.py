"""The published AlexNets' weight files, read without their frameworks and without
running code; their layouts converted to this package's layers.

- Caffe ``.caffemodel`` (``bvlc_alexnet``, ``bvlc_reference_caffenet``): a small reader
  of the protobuf wire format (no caffe, no protobuf package) in both of Caffe's formats,
  the current ``NetParameter.layer`` (field 100) and the legacy V1
  ``NetParameter.layers`` (field 2), field numbers from BVLC caffe's
  ``src/caffe/proto/caffe.proto``; ``.binaryproto`` mean images; deploy ``.prototxt``.
- Guerzhoy's ``bvlc_alexnet.npy``: a pickle, read by an unpickler that builds only NumPy
  arrays, dicts and lists and refuses every other global (loading it never runs code).
- torchvision's ``.pth``: ``torch.load(weights_only=True)``; torch is the optional extra
  ``keras_alexnet[torch]``.

Each layout change is a small named rule (`oihw_to_hwio`, `out_in_to_in_out`,
`chw_rows_to_hwc_rows`, `split_groups`). `load_weights_into` sets a file's weights into
a built AlexNet (what ``AlexNet(weights=FILE_or_DIR)`` does), checked completely before
anything is set; `keras_alexnet.convert` builds the models and writes model directories.
Bad files raise `ConversionError` naming the file, the layer and the shapes.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np

from keras_alexnet.layers import PAPER_LAYERS

CAFFE_VARIANTS = ("bvlc_alexnet", "caffenet")
FORMATS = ("caffe", "npy", "torchvision")
CONV_NAMES = PAPER_LAYERS[:5]
FC_NAMES = PAPER_LAYERS[5:]


class ConversionError(ValueError):
    """A weights file that cannot be converted (the message names file, layer, shapes)."""


# ---------------------------------------------------------------------------------------
# Protobuf wire format (https://protobuf.dev/programming-guides/encoding/).

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def _varint(buf, pos, where):
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ConversionError(f"{where}: truncated (a varint runs past byte {len(buf)}).")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ConversionError(f"{where}: not a protobuf message (varint over 10 bytes).")


def iter_fields(buf, where):
    """Yields ``(field_number, wire_type, value, position)`` of one protobuf message.

    ``value`` is an int for varints, a memoryview for length-delimited fields and the
    raw bytes for fixed32 / fixed64 fields; ``position`` is where the field's value
    starts (used to read runs of unpacked floats).
    """
    buf = memoryview(buf)
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos, where)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ConversionError(f"{where}: not a protobuf message (field number 0 at byte {pos}).")
        if wire == VARINT:
            value, new = _varint(buf, pos, where)
        elif wire == LENGTH:
            size, start = _varint(buf, pos, where)
            new = start + size
            if new > end:
                raise ConversionError(
                    f"{where}: truncated (field {field} needs {size} bytes at byte {start}, "
                    f"only {end - start} left)."
                )
            value, pos = buf[start:new], start
        elif wire in (FIXED32, FIXED64):
            new = pos + (4 if wire == FIXED32 else 8)
            if new > end:
                raise ConversionError(f"{where}: truncated (field {field} at byte {pos}).")
            value = buf[pos:new]
        else:
            raise ConversionError(
                f"{where}: not a Caffe protobuf file (wire type {wire} of field {field} at "
                f"byte {pos})."
            )
        yield field, wire, value, pos
        pos = new


def _packed_varints(data, where):
    values, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos, where)
        values.append(value)
    return values


@dataclasses.dataclass
class CaffeLayer:
    """One layer of a Caffe net: its name, type (current string form), blobs and tops."""

    name: str
    type: str
    bottom: list
    top: list
    blobs: list  # of np.float32 arrays in their stored shape
    params: dict = dataclasses.field(default_factory=dict)  # prototxt only: lrn_param, ...


# caffe.proto, V1LayerParameter.LayerType.
V1_TYPES = {
    0: "None", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data",
    6: "Dropout", 7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output",
    11: "Im2col", 12: "ImageData", 13: "InfogainLoss", 14: "InnerProduct", 15: "LRN",
    16: "MultinomialLogisticLoss", 17: "Pooling", 18: "ReLU", 19: "Sigmoid",
    20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split", 23: "TanH", 24: "WindowData",
    25: "Eltwise", 26: "Power", 27: "SigmoidCrossEntropyLoss", 28: "HingeLoss",
    29: "MemoryData", 30: "ArgMax", 31: "Threshold", 32: "DummyData", 33: "Slice",
    34: "MVN", 35: "AbsVal", 36: "Silence", 37: "ContrastiveLoss", 38: "Exp",
    39: "Deconvolution",
}
# The prototxt spelling of the V1 enum (CONVOLUTION, INNER_PRODUCT, ...).
V1_TYPE_NAMES = {
    "NONE": "None", "ACCURACY": "Accuracy", "CONCAT": "Concat", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DROPOUT": "Dropout", "FLATTEN": "Flatten", "IMAGE_DATA": "ImageData",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "POOLING": "Pooling", "RELU": "ReLU",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "MEMORY_DATA": "MemoryData", "DUMMY_DATA": "DummyData", "WINDOW_DATA": "WindowData",
}
# Field numbers (caffe.proto): NetParameter, LayerParameter, V1LayerParameter, BlobProto.
NET_LAYER, NET_LAYERS_V1 = 100, 2
LAYER_FIELDS = dict(name=1, type=2, bottom=3, top=4, blobs=7)
V1_FIELDS = dict(name=4, type=5, bottom=2, top=3, blobs=6)
V1_V0_LAYER = 1  # V1LayerParameter.layer: a V0LayerParameter (pre-2014 files)
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_DOUBLE_DATA, BLOB_SHAPE, SHAPE_DIM = 5, 8, 7, 1


def _floats(chunks):
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)


def parse_blob(buf, where):
    """A ``BlobProto``: returns the float32 data reshaped to its stored shape.

    The shape is ``shape.dim`` when present, else the legacy (num, channels, height,
    width). Data are packed floats (field 5), unpacked floats, or doubles (field 8).
    """
    buf = memoryview(buf)
    legacy = {}
    dims = None
    chunks = []
    fields = iter_fields(buf, where)
    for field, wire, value, pos in fields:
        if field == BLOB_DATA and wire == LENGTH:
            if len(value) % 4:
                raise ConversionError(f"{where}: packed float data of {len(value)} bytes.")
            chunks.append(np.frombuffer(value, "<f4").astype(np.float32))
        elif field == BLOB_DATA and wire == FIXED32:
            chunks.append(np.frombuffer(value, "<f4").astype(np.float32))
        elif field == BLOB_DOUBLE_DATA and wire == LENGTH:
            chunks.append(np.frombuffer(value, "<f8").astype(np.float32))
        elif field == BLOB_DOUBLE_DATA and wire == FIXED64:
            chunks.append(np.frombuffer(value, "<f8").astype(np.float32))
        elif field == BLOB_SHAPE and wire == LENGTH:
            dims = []
            for f, w, v, _ in iter_fields(value, where):
                if f == SHAPE_DIM:
                    dims.extend(_packed_varints(v, where) if w == LENGTH else [v])
        elif field in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH) and wire == VARINT:
            legacy[field] = value
    data = _floats(chunks)
    if dims is None:
        dims = [legacy.get(f, 0) for f in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH)]
        if data.size and int(np.prod(dims)) != data.size:
            # A legacy blob may leave num/channels at 0 meaning 1.
            dims = [d or 1 for d in dims]
    shape = tuple(int(d) for d in dims)
    if int(np.prod(shape)) != data.size:
        raise ConversionError(
            f"{where}: blob shape {shape} holds {int(np.prod(shape))} values but the file "
            f"has {data.size} (truncated or not a Caffe blob)."
        )
    return data.reshape(shape)


def _text(value, where):
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise ConversionError(f"{where}: not a Caffe model (a layer name is not text).") from None


def _parse_layer(buf, fields, v1, where):
    name, type_, bottom, top, blobs = "", "", [], [], []
    for field, wire, value, _ in iter_fields(buf, where):
        if field == fields["name"] and wire == LENGTH:
            name = _text(value, where)
        elif field == fields["type"]:
            if v1 and wire == VARINT:
                type_ = V1_TYPES.get(value, f"V1:{value}")
            elif not v1 and wire == LENGTH:
                type_ = _text(value, where)
        elif field == fields["bottom"] and wire == LENGTH:
            bottom.append(_text(value, where))
        elif field == fields["top"] and wire == LENGTH:
            top.append(_text(value, where))
        elif field == fields["blobs"] and wire == LENGTH:
            blobs.append(value)
        elif v1 and field == V1_V0_LAYER and wire == LENGTH:
            raise ConversionError(
                f"{where}: a V0 (pre-2014) Caffe model; upgrade it first with Caffe's "
                "upgrade_net_proto_binary."
            )
    layer_where = f"{where}: layer {name!r}"
    blobs = [parse_blob(b, f"{layer_where} blob {i}") for i, b in enumerate(blobs)]
    return CaffeLayer(name, type_, bottom, top, blobs)


def read_caffemodel(path):
    """Reads a ``.caffemodel`` (current or V1 format) into a list of `CaffeLayer`.

    Raises:
        ConversionError: the file is missing, truncated, or not a Caffe ``NetParameter``.
    """
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConversionError(f"{where}: cannot read ({e.strerror}).") from None
    layers = {NET_LAYER: [], NET_LAYERS_V1: []}
    for field, wire, value, _ in iter_fields(data, where):
        if field in layers and wire == LENGTH:
            layers[field].append(value)
    if layers[NET_LAYER] and layers[NET_LAYERS_V1]:
        raise ConversionError(f"{where}: holds both current and V1 layers; not a Caffe model.")
    if not (layers[NET_LAYER] or layers[NET_LAYERS_V1]):
        raise ConversionError(
            f"{where}: not a Caffe model (no NetParameter.layer (field 100) or V1 layers "
            "(field 2) found)."
        )
    v1 = bool(layers[NET_LAYERS_V1])
    fields = V1_FIELDS if v1 else LAYER_FIELDS
    return [_parse_layer(b, fields, v1, where) for b in layers[NET_LAYERS_V1 if v1 else NET_LAYER]]


def read_mean_binaryproto(path):
    """Caffe's mean image (``ilsvrc_2012_mean.binaryproto``: a BlobProto 1x3xHxW, BGR).

    Returns:
        float32 ``(H, W, 3)``, RGB, [0, 255] pixel units.
    """
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConversionError(f"{where}: cannot read ({e.strerror}).") from None
    blob = parse_blob(data, where)
    shape = tuple(d for d in blob.shape)
    while len(shape) > 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3 or shape[0] != 3:
        raise ConversionError(f"{where}: a mean image must be 1x3xHxW (BGR), got {blob.shape}.")
    return np.ascontiguousarray(blob.reshape(shape).transpose(1, 2, 0)[..., ::-1], np.float32)


# ---------------------------------------------------------------------------------------
# prototxt: just enough of the text format for layer { name type bottom top *_param }.


def _tokens(text):
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{}:":
            yield c
            i += 1
        elif c in "\"'":
            j = text.index(c, i + 1)
            yield ("str", text[i + 1 : j])
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "{}:#\"'":
                j += 1
            yield ("word", text[i:j])
            i = j


def _parse_block(tokens, where):
    items = []
    for tok in tokens:
        if tok == "}":
            return items
        if not isinstance(tok, tuple):
            raise ConversionError(f"{where}: prototxt syntax error near {tok!r}.")
        key = tok[1]
        nxt = next(tokens, None)
        if nxt == ":":
            nxt = next(tokens, None)
        if nxt == "{":
            items.append((key, _parse_block(tokens, where)))
        elif isinstance(nxt, tuple):
            items.append((key, nxt[1]))
        else:
            raise ConversionError(f"{where}: prototxt syntax error after {key!r}.")
    return items


def read_prototxt(path):
    """The layers of a Caffe ``.prototxt`` (net definition) as `CaffeLayer` without blobs.

    ``params`` holds each layer's ``*_param`` blocks as dicts of their scalar values.
    """
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConversionError(f"{where}: cannot read the prototxt ({e}).") from None
    tokens = _tokens(text)
    try:
        items = _parse_block(tokens, where)
    except (ValueError, StopIteration) as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(f"{where}: prototxt syntax error ({e}).") from None
    layers = []
    for key, body in items:
        if key not in ("layer", "layers") or not isinstance(body, list):
            continue
        get = lambda k: [v for kk, v in body if kk == k]
        type_ = (get("type") or [""])[0]
        type_ = V1_TYPE_NAMES.get(type_, type_)
        params = {k: dict(v for v in p if not isinstance(v[1], list))
                  for k, p in body if k.endswith("_param") and isinstance(p, list)}
        layers.append(
            CaffeLayer((get("name") or [""])[0], type_, get("bottom"), get("top"), [], params)
        )
    if not layers:
        raise ConversionError(f"{where}: no layer {{ ... }} blocks; not a Caffe prototxt.")
    return layers


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


# Caffe's bvlc nets: LRN local_size 5, alpha 1e-4, beta 0.75, k 1 (alpha divided by size).
CAFFE_LRN = {"local_size": 5.0, "alpha": 1e-4, "beta": 0.75, "k": 1.0}


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


def _keras_from_oihw(raw, pool5_hwc, where):
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
                if w.shape[0] != int(np.prod(pool5_hwc)):
                    raise ConversionError(
                        f"{where}: layer 'fc6': weights {arrays[0].shape} read "
                        f"{w.shape[0]} inputs; the model's pool5 {tuple(pool5_hwc)} gives "
                        f"{int(np.prod(pool5_hwc))}."
                    )
                w = chw_rows_to_hwc_rows(w, pool5_hwc)
            out[name] = [w, b]
    return out


def _select_layers(found, where, include_top=True):
    """The paper's layers from ``found`` ({name: arrays}); a missing layer is an error."""
    wanted = PAPER_LAYERS if include_top else CONV_NAMES
    missing = [n for n in wanted if n not in found]
    if missing:
        listing = ", ".join(f"{k} {s}" for k, s in _raw_shapes(found).items()) or "none"
        raise ConversionError(
            f"{where}: missing layer(s) {', '.join(missing)} of AlexNet; the file's weight "
            f"layers are: {listing}."
        )
    return {n: found[n] for n in wanted}


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


def assign_weights(model, weights, where):
    """Sets ``weights`` ({layer: [kernel, bias]}, one-device layout) into ``model``.

    Every shape is checked before any weight is set, so a failure leaves the model as
    it was. Tower layouts take the halves of each layer (`split_groups`).
    """
    plan = []
    targets = _targets(model)
    for name, parts in targets.items():
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
# The three readers.


def _caffe_weight_layers(layers, where):
    found = {}
    for layer in layers:
        if layer.type in ("Convolution", "InnerProduct") and layer.blobs:
            found[layer.name] = layer.blobs
    return found


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


# pool5 of every variant on its own input size (227 or 224): what fc6's rows are ordered by.
POOL5_HWC = (6, 6, 256)


def caffe_keras_weights(weights, prototxt=None, variant=None):
    """Reads a ``.caffemodel``: returns ``(variant, {layer: [kernel, bias]})``."""
    where = str(weights)
    layers = read_caffemodel(weights)
    proto_layers = None
    if prototxt is not None:
        proto_layers = read_prototxt(prototxt)
        _check_prototxt_lrn(proto_layers, str(prototxt))
    variant = resolve_caffe_variant(layers, where, proto_layers, prototxt, variant)
    raw = _select_layers(_caffe_weight_layers(layers, where), where)
    return variant, _keras_from_oihw(raw, POOL5_HWC, where)


# -- npy (a pickle) --

_NPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    ("collections", "OrderedDict"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Builds only NumPy arrays, dtypes, scalars, dicts and lists; refuses other globals."""

    def __init__(self, file, where):
        super().__init__(file, encoding="latin1")
        self.where = where

    def find_class(self, module, name):
        if (module, name) in _NPY_GLOBALS:
            return super().find_class(module, name)
        raise ConversionError(
            f"{self.where}: refusing to unpickle the global {module}.{name}: a weights .npy "
            "holds only NumPy arrays in dicts and lists (nothing was executed)."
        )

    def persistent_load(self, pid):
        raise ConversionError(f"{self.where}: refusing a pickle with persistent ids.")


def load_npy_dict(path):
    """Reads a pickled ``.npy`` (``np.save`` of a dict) without running any code.

    Returns:
        The dict stored in the file.
    """
    where = str(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ConversionError(f"{where}: cannot read ({e.strerror}).") from None
    with f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        except (ValueError, OSError, SyntaxError) as e:
            raise ConversionError(f"{where}: not a .npy file ({e}).") from None
        if not dtype.hasobject:
            raise ConversionError(
                f"{where}: a .npy array of {dtype} {shape}, not a pickled dict of layers "
                "(Guerzhoy's bvlc_alexnet.npy)."
            )
        try:
            obj = _ArraysOnlyUnpickler(f, where).load()
        except ConversionError:
            raise
        except Exception as e:  # truncated or corrupt pickle
            raise ConversionError(f"{where}: cannot read the pickled data ({type(e).__name__}: {e}).") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise ConversionError(f"{where}: holds a {type(obj).__name__}, not a dict of layers.")
    return obj


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


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ConversionError(
            "Reading a torchvision .pth needs PyTorch: pip install 'keras_alexnet[torch]' "
            "(or pip install torch)."
        ) from None
    return torch


def torchvision_keras_weights(weights):
    """torchvision's state dict -> {layer: [kernel, bias]}."""
    where = str(weights)
    torch = _import_torch()
    try:
        state = torch.load(weights, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ConversionError(f"{where}: no such file.") from None
    except Exception as e:
        raise ConversionError(f"{where}: not a PyTorch state dict ({type(e).__name__}: {e}).") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConversionError(f"{where}: holds a {type(state).__name__}, not a state dict.")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    found = {}
    for name, key in TORCHVISION_KEYS.items():
        if f"{key}.weight" in state and f"{key}.bias" in state:
            found[name] = [
                state[f"{key}.{p}"].detach().cpu().numpy().astype(np.float32) for p in ("weight", "bias")
            ]
    if len(found) < len(TORCHVISION_KEYS):
        missing = [f"{n} ({TORCHVISION_KEYS[n]})" for n in TORCHVISION_KEYS if n not in found]
        shapes = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
        raise ConversionError(
            f"{where}: missing layer(s) {', '.join(missing)} of torchvision's AlexNet; the "
            f"file's tensors are: {', '.join(f'{k} {s}' for k, s in list(shapes.items())[:20])}."
        )
    return _keras_from_oihw(found, POOL5_HWC, where)


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
    return assign_weights(model, keras_weights, where)


# ---------------------------------------------------------------------------------------
