"""Published ImageNet AlexNets as Keras models: read their weight files, write a model dir.

Three sources (REFERENCE.md, "Published trained AlexNets"):

- Caffe ``.caffemodel`` (``bvlc_alexnet``, ``bvlc_reference_caffenet``), read by a small
  reader of the protobuf wire format (no caffe, no protobuf package) in both of Caffe's
  formats: the current ``NetParameter.layer`` (field 100) and the legacy V1
  ``NetParameter.layers`` (field 2). Field numbers are those of BVLC caffe's
  ``src/caffe/proto/caffe.proto``.
- Guerzhoy's ``bvlc_alexnet.npy``: bvlc_alexnet's weights as a pickled dict
  ``name -> [W, b]`` (from ethereon/caffe-tensorflow: conv W in HWIO, FC W in (in, out),
  fc6 rows already in (h, w, c) order). It is a pickle, so it is read by an unpickler
  that builds only NumPy arrays, dicts and lists and refuses every other global: loading
  it never runs code. ``np.load(allow_pickle=True)`` is never called.
- torchvision's ``alexnet-owt-7be5be79.pth`` (``IMAGENET1K_V1``), read with
  ``torch.load(weights_only=True)``; torch is the optional extra ``keras_alexnet[torch]``.

Each layout change is a small named rule (`oihw_to_hwio`, `out_in_to_in_out`,
`chw_rows_to_hwc_rows`, `split_groups`), tested on its own. The converted model takes
the source network's own input (NHWC): Caffe's 227x227 BGR 0-255 minus the mean, or
torchvision's 224x224 normalised RGB, and computes the source's function: fc8 logits,
then a softmax named ``predictions``, as in Caffe's deploy nets (``prob``). torchvision's
net ends in logits: its converted model still ends in the softmax (so every converted
model outputs probabilities); build ``keras.Model(model.input,
model.get_layer("fc8").output)`` for logits.

fc8 may have any number of classes and fc6 / fc7 any width (a fine-tuned net): the model
gets the file's sizes; every other shape must be the variant's. A model directory with
other than 1000 classes needs the class names (``class_names=``, ``--class-names FILE``);
with 1000 classes they are the ImageNet wnids.

The model directory written by `save_model_dir` (``--out DIR``)::

    DIR/model.keras      the Keras model
    DIR/config.json      kind, num_classes, class_names, class_index, preprocessing,
                         source (format, weights, sha256, variant, prototxt, mean_file),
                         versions
    DIR/mean_image.npy   only when preprocessing.mean == "image": float32 (S, S, 3), RGB,
                         [0, 255]

The network input for an RGB crop ``x`` in [0, 255] (taken from the central
``resize_size`` square after resizing the shorter side to ``resize_size``) is
``channel_order((x - mean) / std)``, where ``mean`` is the mean image cropped at the same
window or ``mean_rgb``, and ``std`` is ``std_rgb`` (1 when null).

Command line::

    python -m keras_alexnet.convert --from caffe --weights bvlc_alexnet.caffemodel \\
        --prototxt deploy.prototxt --mean ilsvrc_2012_mean.binaryproto --out bvlc_alexnet
    python -m keras_alexnet.convert --from npy --weights bvlc_alexnet.npy --out alexnet_npy
    python -m keras_alexnet.convert --from torchvision \\
        --weights alexnet-owt-7be5be79.pth --out alexnet_torchvision

Bad files (truncated, another format, another network's shapes, a missing layer) raise
`ConversionError` naming the file, the layer and the shapes, before any weight is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

from keras_alexnet.model import PAPER_LAYERS

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


def _build(variant, weights_by_name, where):
    """A fresh model of ``variant`` sized from the file: fc8's class count and fc6's
    width (4096 in every published net; a fine-tuned net may differ)."""
    from keras_alexnet.model import AlexNet

    classes = int(np.size(weights_by_name["fc8"][1]))
    fc_units = int(np.size(weights_by_name["fc6"][1]))
    return AlexNet(variant=variant, classes=classes, fc_units=fc_units, seed=0)


def _pool5_hwc(variant):
    # All four variants have 6x6x256 pool5 on their own input sizes.
    return (6, 6, 256)


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
    return variant, _keras_from_oihw(raw, _pool5_hwc(variant), where)


def convert_caffe(weights, prototxt=None, variant=None, mean=None):
    """A Caffe ``.caffemodel`` as a Keras AlexNet of its variant.

    Args:
        weights: the ``.caffemodel`` (current or V1 format).
        prototxt: optional deploy ``.prototxt``; it fixes the variant (LRN before or
            after pooling) when the caffemodel holds only its weight layers.
        variant: ``"bvlc_alexnet"`` or ``"caffenet"``, needed only when neither file
            tells; must agree with them otherwise.
        mean: optional ``.binaryproto`` mean image; only checked here (read it with
            `read_mean_binaryproto`; `convert` writes it into the model directory).

    Returns:
        An `AlexNetModel` (``model.variant`` is the variant) taking 227x227 BGR inputs in
        [0, 255] minus the mean, ending in the softmax ``predictions`` (after ``fc8``).
    """
    if mean is not None:
        read_mean_binaryproto(mean)
    variant, keras_weights = caffe_keras_weights(weights, prototxt, variant)
    model = _build(variant, keras_weights, str(weights))
    return assign_weights(model, keras_weights, str(weights))


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


def convert_npy(weights, variant="bvlc_alexnet"):
    """Guerzhoy's ``bvlc_alexnet.npy`` as a Keras AlexNet (bvlc_alexnet by default).

    The file's fc6 rows are already in the (h, w, c) order of Keras' Flatten
    (ethereon/caffe-tensorflow reorders them; Guerzhoy's ``myalexnet_forward.py``
    flattens NHWC pool5 maps), so no rule but the tower split applies.
    """
    if variant not in CAFFE_VARIANTS:
        raise ConversionError(f"{weights}: variant must be one of {CAFFE_VARIANTS}, got {variant!r}.")
    keras_weights = npy_keras_weights(weights)
    model = _build(variant, keras_weights, str(weights))
    return assign_weights(model, keras_weights, str(weights))


# -- torchvision --

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
    return _keras_from_oihw(found, _pool5_hwc("torchvision"), where)


def convert_torchvision(weights):
    """torchvision's ``alexnet`` state dict (``.pth``) as a Keras AlexNet.

    Returns:
        An `AlexNetModel` (variant ``"torchvision"``) taking 224x224 RGB inputs
        normalised as torchvision's (``x / 255 - mean) / std``), ending in fc8 and the
        softmax ``predictions`` (torchvision's net ends in the logits of fc8).
    """
    keras_weights = torchvision_keras_weights(weights)
    model = _build("torchvision", keras_weights, str(weights))
    return assign_weights(model, keras_weights, str(weights))


# ---------------------------------------------------------------------------------------
# Preprocessing recorded in config.json.

CAFFE_MEAN_RGB = [123.0, 117.0, 104.0]  # Caffe's B, G, R = 104, 117, 123
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


def caffe_preprocessing(mean_image=False):
    """Caffe's input: 227 crops of the 256 square, BGR, minus the mean image or B,G,R
    104, 117, 123."""
    common = {"crop_size": 227, "resize_size": 256, "std_rgb": None, "channel_order": "BGR"}
    if mean_image:
        return dict(
            common, mean="image", mean_rgb=None,
            provenance="Caffe's bvlc_alexnet / bvlc_reference_caffenet input (deploy.prototxt, "
            "227x227 BGR in [0, 255]) minus the mean image of the --mean binaryproto "
            "(ilsvrc_2012_mean), cropped at the same window.",
        )
    return dict(
        common, mean="channel", mean_rgb=list(CAFFE_MEAN_RGB),
        provenance="Caffe's bvlc_alexnet / bvlc_reference_caffenet input (deploy.prototxt, "
        "227x227 BGR in [0, 255]) minus Caffe's per-channel ImageNet mean B,G,R = 104, 117, "
        "123 (the channel means of ilsvrc_2012_mean are 104.0, 116.7, 122.7).",
    )


def torchvision_preprocessing():
    """torchvision's IMAGENET1K_V1 transforms: resize 256, centre crop 224, /255, Normalize."""
    return {
        "crop_size": 224, "resize_size": 256, "mean": "channel",
        "mean_rgb": [255.0 * m for m in TORCHVISION_MEAN],
        "std_rgb": [255.0 * s for s in TORCHVISION_STD],
        "channel_order": "RGB",
        "provenance": "torchvision's AlexNet_Weights.IMAGENET1K_V1 transforms: resize 256, "
        "centre crop 224, /255, Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, "
        "0.225)), here in [0, 255] units.",
    }


# ---------------------------------------------------------------------------------------
# The model directory.


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model_dir(model, out_dir, *, preprocessing, source, mean_image=None,
                   class_names=None, overwrite=False):
    """Writes the model directory (module docstring) with
    `keras_alexnet.runs.write_model_dir` (atomically: a reader never sees a half-written
    directory), after checking the class names and the mean against the model.

    Args:
        model: the converted Keras model.
        out_dir: the directory to create.
        preprocessing: the ``preprocessing`` dict (`caffe_preprocessing`, ...).
        source: the ``source`` dict (format, weights, sha256, variant, prototxt,
            mean_file).
        mean_image: float32 (S, S, 3) RGB [0, 255] when ``preprocessing["mean"] ==
            "image"``.
        class_names: the class names in fc8's order; default the 1000 ImageNet wnids
            (required when fc8 has another number of classes).
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``out_dir`` as a `Path`.
    """
    from keras_alexnet.imagenet import imagenet_class_names

    out_dir = Path(out_dir)
    num_classes = int(model.get_layer("fc8").units)
    if class_names is None:
        if num_classes != 1000:
            raise ConversionError(
                f"fc8 has {num_classes} classes: pass their names (class_names=, "
                "--class-names FILE)."
            )
        class_names = list(imagenet_class_names())
    else:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ConversionError(f"{len(class_names)} class names for fc8's {num_classes} classes.")
    if (preprocessing["mean"] == "image") != (mean_image is not None):
        raise ValueError("mean_image is needed exactly when preprocessing['mean'] == 'image'.")
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists (pass overwrite=True / --overwrite).")
    from keras_alexnet import runs

    old = None
    if out_dir.exists() and overwrite:
        old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
        os.replace(out_dir, old)
    try:
        runs.write_model_dir(out_dir, model, preprocessing=preprocessing, source=source,
                             mean_image=mean_image, class_names=class_names)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def read_model_dir(model_dir):
    """A model directory as ``(model, config, mean_image or None)``, through
    `keras_alexnet.runs.open_run` (what every tool uses)."""
    from keras_alexnet import runs

    run = runs.open_run(model_dir)
    pre = run.preprocessing
    return run.model, run.config, pre.mean if pre.mean_mode == "image" else None


def convert(source_format, weights, out_dir, *, prototxt=None, variant=None, mean=None,
            class_names=None, overwrite=False):
    """Converts a published weights file and writes its model directory.

    Returns:
        ``(model, out_dir)``.
    """
    if source_format not in FORMATS:
        raise ValueError(f"source_format must be one of {FORMATS}, got {source_format!r}.")
    mean_image = None
    if source_format == "caffe":
        model = convert_caffe(weights, prototxt=prototxt, variant=variant)
    elif source_format == "npy":
        model = convert_npy(weights, variant=variant or "bvlc_alexnet")
    else:
        if variant not in (None, "torchvision"):
            raise ConversionError(f"{weights}: a torchvision file is variant 'torchvision', not {variant!r}.")
        model = convert_torchvision(weights)
    if source_format in ("caffe", "npy"):
        if mean is not None:
            mean_image = read_mean_binaryproto(mean)
            size = caffe_preprocessing()["resize_size"]
            if mean_image.shape[:2] != (size, size):
                raise ConversionError(
                    f"{mean}: mean image {mean_image.shape[:2]}; expected {size}x{size}."
                )
        preprocessing = caffe_preprocessing(mean_image is not None)
    else:
        if mean is not None:
            raise ConversionError("--mean applies to Caffe weights only.")
        preprocessing = torchvision_preprocessing()
    source = {
        "format": source_format,
        "weights": str(Path(weights).resolve()),
        "sha256": sha256_file(weights),
        "variant": model.variant,
        "prototxt": None if prototxt is None else str(Path(prototxt).resolve()),
        "mean_file": None if mean is None else str(Path(mean).resolve()),
    }
    out = save_model_dir(model, out_dir, preprocessing=preprocessing, source=source,
                         mean_image=mean_image, class_names=class_names, overwrite=overwrite)
    return model, out


# ---------------------------------------------------------------------------------------
# AlexNet(weights=...).


def weights_variant(weights):
    """The variant a weights file or model directory holds (for `AlexNet(weights=...)`)."""
    path = Path(weights)
    if path.is_dir():
        with open(path / "config.json", encoding="utf-8") as f:
            return json.load(f)["source"]["variant"]
    suffix = path.suffix.lower()
    if suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as z:
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


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_alexnet.convert",
        description="Convert a published ImageNet AlexNet (Caffe, Guerzhoy .npy, torchvision) "
        "into a Keras model directory.",
    )
    parser.add_argument("--from", dest="source_format", required=True, choices=FORMATS)
    parser.add_argument("--weights", required=True, help=".caffemodel, .npy or .pth")
    parser.add_argument("--prototxt", help="Caffe deploy.prototxt (tells LRN/pool order)")
    parser.add_argument("--variant", choices=CAFFE_VARIANTS + ("torchvision",))
    parser.add_argument("--mean", help="Caffe mean image .binaryproto (ilsvrc_2012_mean)")
    parser.add_argument("--class-names", help="text file, one class name a line (fc8 != 1000)")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    class_names = None
    if args.class_names:
        class_names = [l.strip() for l in Path(args.class_names).read_text().splitlines() if l.strip()]
    try:
        model, out = convert(
            args.source_format, args.weights, args.out, prototxt=args.prototxt,
            variant=args.variant, mean=args.mean, class_names=class_names,
            overwrite=args.overwrite,
        )
    except (ConversionError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({model.variant}, {model.count_params():,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
