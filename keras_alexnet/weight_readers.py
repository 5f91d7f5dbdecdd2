"""The published AlexNets' weight files read without their frameworks and without
running code, in the files' own layouts (`keras_alexnet.weight_files` maps them into a
model).

- Caffe ``.caffemodel``: a small reader of the protobuf wire format (no caffe, no protobuf
  package) in both of Caffe's formats, the current ``NetParameter.layer`` (field 100) and
  the legacy V1 ``NetParameter.layers`` (field 2), field numbers from BVLC caffe's
  ``src/caffe/proto/caffe.proto``; ``.binaryproto`` mean images; deploy ``.prototxt``.
- Guerzhoy's ``bvlc_alexnet.npy``: a pickle, read by an unpickler that builds only NumPy
  arrays, dicts and lists and refuses every other global (``np.load(allow_pickle=True)``
  would run whatever the pickle names).
- torchvision's ``.pth``: ``torch.load(weights_only=True)``, torch's own restricted
  unpickler; torch is the optional extra ``keras_alexnet[torch]``.

Bad files raise `ConversionError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np


class ConversionError(ValueError):
    """A weights file that cannot be converted (the message names file, layer, shapes)."""


# ---------------------------------------------------------------------------------------
# Caffe: the protobuf wire format (https://protobuf.dev/programming-guides/encoding/).


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


# ---------------------------------------------------------------------------------------
# Guerzhoy's .npy (a pickle).

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


# ---------------------------------------------------------------------------------------
# torchvision's .pth.


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ConversionError(
            "Reading a torchvision .pth needs PyTorch: pip install 'keras_alexnet[torch]' "
            "(or pip install torch)."
        ) from None
    return torch



def load_torch_state_dict(path):
    """Reads a PyTorch state dict (``torch.save(model.state_dict())``) with torch's
    ``weights_only`` unpickler, which builds only tensors and plain containers.

    A checkpoint's ``{"state_dict": ...}`` is unwrapped and ``nn.DataParallel``'s
    ``module.`` prefix dropped.

    Returns:
        ``{key: np.ndarray}`` of the file's tensors, in PyTorch's layouts.
    """
    where = str(path)
    torch = _import_torch()
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ConversionError(f"{where}: no such file.") from None
    except Exception as e:
        raise ConversionError(f"{where}: not a PyTorch state dict ({type(e).__name__}: {e}).") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConversionError(f"{where}: holds a {type(state).__name__}, not a state dict.")
    arrays = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            # NumPy has no bfloat16: floats come back as float32 (no copy when they are).
            arrays[key.removeprefix("module.")] = (value.float() if value.is_floating_point() else value).numpy()
    return arrays
