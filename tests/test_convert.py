"""Published AlexNets: the variants, the weight readers and the model directory, each
checked against an independent reference (torchvision, OpenCV's Caffe importer, NumPy)."""

import json
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_alexnet
from keras_alexnet import convert, runs, weight_files
from keras_alexnet.imagenet import imagenet_class_names
from keras_alexnet.images import load_image
from keras_alexnet.preprocessing import RESIZE_SIZE
from keras_alexnet.layers import LocalResponseNormalization, OnDevice
from keras_alexnet.model import layer_table
from keras_alexnet.weight_readers import ConversionError

RTOL = 1e-4


def leaf(model, name):
    layer = model.get_layer(name)
    return layer.layer if isinstance(layer, OnDevice) else layer


def assert_close(actual, expected, rtol=RTOL):
    """Equal to ``rtol`` relative to the largest magnitude (logits near 0 have no
    relative precision of their own). Returns the max relative difference."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)
    return float(np.abs(actual - expected).max() / scale)


def max_rel_diff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def logits_model(model):
    return keras.Model(model.input, model.get_layer("fc8").output)


def network_input(squares, pre, mean_image=None):
    """config.json's preprocessing, written out here independently of the package's: the
    crop of the central square, minus the mean (image cropped alike, or per channel),
    divided by std, in the channel order; NHWC."""
    s, c = squares.shape[1], pre["crop_size"]
    t = (s - c) // 2
    x = squares[:, t : t + c, t : t + c, :].astype(np.float32)
    if pre["mean"] == "image":
        mt = (mean_image.shape[0] - c) // 2
        x = x - mean_image[mt : mt + c, mt : mt + c]
    elif pre["mean"] == "channel":
        x = x - np.float32(pre["mean_rgb"])
    if pre["std_rgb"] is not None:
        x = x / np.float32(pre["std_rgb"])
    assert pre["channel_order"] in ("RGB", "BGR")
    return np.ascontiguousarray(x[..., ::-1] if pre["channel_order"] == "BGR" else x)


@pytest.fixture(scope="module")
def squares(shared_data):
    """Three real photos, decoded, shorter side resized to 256, central 256 square: once."""
    root = shared_data / "imagenet-sample" / "val"
    paths = sorted(str(p) for p in root.glob("*/*.JPEG"))[:3]
    return np.stack([load_image(p, RESIZE_SIZE).numpy() for p in paths])


# ---------------------------------------------------------------------------------------
# Layout rules, each against an independent reference.


def torch_module():
    return pytest.importorskip("torch")


def test_oihw_to_hwio_matches_torch_conv2d():
    torch = torch_module()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 9, 8)).astype(np.float32)  # NCHW
    w = rng.normal(size=(5, 3, 3, 2)).astype(np.float32)  # OIHW, non-square kernel
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    got = tf.nn.conv2d(x.transpose(0, 2, 3, 1), weight_files.oihw_to_hwio(w), 1, "VALID").numpy()
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), expected, rtol=1e-5, atol=1e-5)


def test_out_in_to_in_out_matches_torch_linear():
    torch = torch_module()
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(3, 7)).astype(np.float32), rng.normal(size=(4, 7)).astype(np.float32)
    expected = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(x @ weight_files.out_in_to_in_out(w), expected, rtol=1e-5, atol=1e-5)


def test_chw_rows_to_hwc_rows_matches_torch_flatten():
    torch = torch_module()
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(2, 3, 2, 4)).astype(np.float32)  # N, C, H, W
    w = rng.normal(size=(5, 24)).astype(np.float32)  # (out, C*H*W)
    expected = torch.nn.functional.linear(torch.flatten(torch.from_numpy(maps), 1), torch.from_numpy(w))
    keras_flat = keras.layers.Flatten()(maps.transpose(0, 2, 3, 1)).numpy()  # NHWC flatten
    kernel = weight_files.chw_rows_to_hwc_rows(weight_files.out_in_to_in_out(w), (2, 4, 3))
    np.testing.assert_allclose(keras_flat @ kernel, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_split_groups_gives_tower_a_the_first_half_of_a_grouped_blob():
    torch = torch_module()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 4, 6, 6)).astype(np.float32)
    w = rng.normal(size=(6, 2, 3, 3)).astype(np.float32)  # group 2: input depth per group
    b = rng.normal(size=(6,)).astype(np.float32)
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), groups=2
    ).numpy()
    (ka, kb), (ba, bb) = weight_files.split_groups(weight_files.oihw_to_hwio(w)), weight_files.split_groups(b)
    nhwc = x.transpose(0, 2, 3, 1)
    ya = tf.nn.conv2d(nhwc[..., :2], ka, 1, "VALID") + ba  # tower a reads the first maps
    yb = tf.nn.conv2d(nhwc[..., 2:], kb, 1, "VALID") + bb
    got = np.concatenate([ya, yb], axis=-1).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Variants.

TINY = dict(input_shape=(67, 67, 3), classes=7, fc_units=32)


@pytest.mark.parametrize(
    "variant,params,input_size",
    [("paper", 60_965_224, 227), ("bvlc_alexnet", 60_965_224, 227),
     ("caffenet", 60_965_224, 227), ("torchvision", 61_100_840, 224)],
)
def test_variant_parameter_counts_and_shapes(variant, params, input_size):
    model = keras_alexnet.AlexNet(variant=variant, seed=0)
    assert model.variant == variant
    assert model.count_params() == params
    assert model.input.shape == (None, input_size, input_size, 3)
    assert model.output.shape == (None, 1000)
    rows = {r["layer"]: r["output_shape"] for r in layer_table(model)}
    conv1 = {"torchvision": (55, 55, 64)}.get(variant, (55, 55, 96))
    assert rows["conv1"] == conv1 and rows["conv5"][:2] == (13, 13) and rows["fc6"] == (4096,)
    assert model.get_layer("fc6").kernel.shape == (9216, 4096)


def test_caffe_variants_order_lrn_and_pooling_and_normalise_across_towers():
    names = {v: [l.name for l in keras_alexnet.AlexNet(variant=v, **TINY).layers]
             for v in ("bvlc_alexnet", "caffenet")}
    a, c = names["bvlc_alexnet"], names["caffenet"]
    # bvlc_alexnet: conv -> relu -> norm -> pool; caffenet: conv -> relu -> pool -> norm.
    assert a.index("conv1_a") < a.index("lrn1") < a.index("pool1_a") < a.index("conv2_a")
    assert c.index("conv1_a") < c.index("pool1_a") < c.index("lrn1") < c.index("conv2_a")
    assert c.index("pool2_b") < c.index("lrn2") < c.index("conv3_a")
    model = keras_alexnet.AlexNet(variant="bvlc_alexnet", seed=1, **TINY)
    lrn = model.get_layer("lrn1")
    assert isinstance(lrn, LocalResponseNormalization)
    assert (lrn.depth_radius, lrn.bias, lrn.alpha, lrn.beta, lrn.groups) == (2, 1.0, 2e-5, 0.75, 1)
    # Caffe's LRN (NumPy transcription: b = a / (k + alpha/n * sum a^2) ** beta over 5
    # neighbouring maps of all 96) crosses the boundary between the towers' maps.
    cut = keras.Model(model.input, [model.get_layer("conv1_a").output,
                                    model.get_layer("conv1_b").output,
                                    model.get_layer("lrn1_a").output,
                                    model.get_layer("lrn1_b").output])
    x = np.random.default_rng(0).normal(0, 60, (2, 67, 67, 3)).astype(np.float32)
    ca, cb, la, lb = cut.predict(x, verbose=0)
    a_ = np.concatenate([ca, cb], axis=-1).astype(np.float64)
    sq = np.pad(a_ ** 2, [(0, 0)] * 3 + [(2, 2)])
    window = sum(sq[..., i : i + 96] for i in range(5))
    expected = a_ / (1.0 + 1e-4 / 5 * window) ** 0.75
    np.testing.assert_allclose(np.concatenate([la, lb], -1), expected, rtol=1e-5, atol=1e-5)


def test_torchvision_variant_layers():
    model = keras_alexnet.AlexNet(variant="torchvision", fc_units=32)
    names = [l.name for l in model.layers]
    assert names[:4] == ["image", "pad1", "conv1", "pool1"]
    assert not any(n.startswith("lrn") for n in names)
    assert names.index("flatten") < names.index("drop5") < names.index("fc6") < names.index("drop6") < names.index("fc7") < names.index("fc8")
    assert "drop7" not in names
    assert model.get_layer("pad1").padding == ((2, 2), (2, 2))
    with pytest.raises(ValueError, match="6x6"):
        keras_alexnet.AlexNet(variant="torchvision", input_shape=(256, 256, 3))
    with pytest.raises(ValueError, match="no groups"):
        keras_alexnet.AlexNet(variant="torchvision", grouping="towers")
    assert keras_alexnet.AlexNet(variant="torchvision", include_top=False, input_shape=(256, 256, 3)).output.shape == (None, 7, 7, 256)


def test_explicit_arguments_override_the_variant():
    model = keras_alexnet.AlexNet(variant="caffenet", lrn_order="lrn_pool", lrn_bias=2.0, **TINY)
    names = [l.name for l in model.layers]
    assert names.index("lrn1") < names.index("pool1_a")
    assert model.get_layer("lrn1").bias == 2.0
    narrow = keras_alexnet.AlexNet(variant="torchvision", conv_filters=(32, 64, 96, 64, 64),
                                   fc_units=16)
    assert narrow.get_layer("conv1").kernel.shape == (11, 11, 3, 32)


@pytest.mark.parametrize("variant", ["paper", "bvlc_alexnet", "caffenet", "torchvision"])
def test_variant_save_load_round_trip_safe_mode(tmp_path, variant):
    kwargs = dict(fc_units=32) if variant == "torchvision" else TINY
    model = keras_alexnet.AlexNet(variant=variant, seed=4, **kwargs)
    size = model.input.shape[1]
    x = np.random.default_rng(1).normal(0, 50, (2, size, size, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    assert isinstance(loaded, keras_alexnet.AlexNetModel) and loaded.variant == variant
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


# ---------------------------------------------------------------------------------------
# A protobuf ENCODER (independent of convert's decoder) for Caffe files.


def pb_varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_key(field, wire):
    return pb_varint(field << 3 | wire)


def pb_bytes(field, data):
    return pb_key(field, 2) + pb_varint(len(data)) + data


def pb_int(field, n):
    return pb_key(field, 0) + pb_varint(n)


def pb_blob(array, legacy=False, packed=True):
    """BlobProto: shape (7: BlobShape.dim 1, packed) or num/channels/height/width (1-4);
    data 5 (packed floats, or one fixed32 per value)."""
    array = np.asarray(array, "<f4")
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(pb_int(f, d) for f, d in zip((1, 2, 3, 4), dims))
    else:
        head = pb_bytes(7, pb_bytes(1, b"".join(pb_varint(d) for d in array.shape)))
    if packed:
        data = pb_bytes(5, array.tobytes())
    else:
        data = b"".join(pb_key(5, 5) + struct.pack("<f", v) for v in array.ravel())
    return head + data


V1_ENUM = {"Convolution": 4, "InnerProduct": 14, "LRN": 15, "Pooling": 17, "ReLU": 18,
           "Dropout": 6, "Softmax": 20}


def pb_net(layers, v1=False, name="AlexNet"):
    """NetParameter: name 1; layer 100 (LayerParameter: name 1, type 2, bottom 3, top 4,
    blobs 7) or layers 2 (V1LayerParameter: bottom 2, top 3, name 4, type 5, blobs 6)."""
    out = [pb_bytes(1, name.encode())]
    for lname, ltype, bottoms, tops, blobs in layers:
        if v1:
            body = [pb_bytes(4, lname.encode()), pb_int(5, V1_ENUM[ltype])]
            body += [pb_bytes(2, b.encode()) for b in bottoms] + [pb_bytes(3, t.encode()) for t in tops]
            body += [pb_bytes(6, pb_blob(a, legacy=True, packed=a.size > 4096)) for a in blobs]
            out.append(pb_bytes(2, b"".join(body)))
        else:
            body = [pb_bytes(1, lname.encode()), pb_bytes(2, ltype.encode())]
            body += [pb_bytes(3, b.encode()) for b in bottoms] + [pb_bytes(4, t.encode()) for t in tops]
            body += [pb_bytes(7, pb_blob(a)) for a in blobs]
            out.append(pb_bytes(100, b"".join(body)))
    return b"".join(out)


CAFFE_SHAPES = {
    "conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3),
    "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3),
    "fc6": (4096, 9216), "fc7": (4096, 4096), "fc8": (1000, 4096),
}


def caffe_layers(weights, variant, weights_only=False):
    """The deploy net's layer list (as Caffe writes it into a .caffemodel) with blobs."""
    def conv(n, bottom):
        return [(f"conv{n}", "Convolution", [bottom], [f"conv{n}"], weights[f"conv{n}"]),
                (f"relu{n}", "ReLU", [f"conv{n}"], [f"conv{n}"], [])]

    def norm_and_pool(n):
        norm_first = variant == "bvlc_alexnet"  # conv -> relu -> norm -> pool
        first, second = ("norm", "pool") if norm_first else ("pool", "norm")
        kinds = {"norm": "LRN", "pool": "Pooling"}
        return [(f"{first}{n}", kinds[first], [f"conv{n}"], [f"{first}{n}"], []),
                (f"{second}{n}", kinds[second], [f"{first}{n}"], [f"{second}{n}"], [])], f"{second}{n}"

    def fc(n, bottom):
        return [(f"fc{n}", "InnerProduct", [bottom], [f"fc{n}"], weights[f"fc{n}"])]

    block1, top1 = norm_and_pool(1)
    block2, top2 = norm_and_pool(2)
    seq = (conv(1, "data") + block1 + conv(2, top1) + block2 + conv(3, top2)
           + conv(4, "conv3") + conv(5, "conv4")
           + [("pool5", "Pooling", ["conv5"], ["pool5"], [])]
           + fc(6, "pool5") + [("relu6", "ReLU", ["fc6"], ["fc6"], []),
                               ("drop6", "Dropout", ["fc6"], ["fc6"], [])]
           + fc(7, "fc6") + [("relu7", "ReLU", ["fc7"], ["fc7"], []),
                             ("drop7", "Dropout", ["fc7"], ["fc7"], [])]
           + fc(8, "fc7") + [("prob", "Softmax", ["fc8"], ["prob"], [])])
    if weights_only:
        seq = [layer for layer in seq if layer[4]]
    return seq


def random_caffe_weights(seed=0, shapes=CAFFE_SHAPES):
    """Random Caffe blobs (OIHW, (out, in)) scaled so that conv1's activations on
    mean-subtracted photos are of order 100 (LRN's denominator far from 1) and the
    softmax is not saturated."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:]))
        std = {"conv1": 0.05, "fc8": 0.3 / np.sqrt(fan_in)}.get(name, np.sqrt(2.0 / fan_in))
        out[name] = [rng.standard_normal(shape, dtype=np.float32) * np.float32(std),
                     rng.standard_normal(shape[:1], dtype=np.float32) * np.float32(0.5)]
    return out


# Small nets (fc6 / fc7 of width 8; the converted model takes the file's fc widths) keep
# the tests that need no reference implementation fast.
SMALL_SHAPES = dict(CAFFE_SHAPES, fc6=(8, 9216), fc7=(8, 8), fc8=(10, 8))
SMALL_1000 = dict(SMALL_SHAPES, fc8=(1000, 8))


@pytest.fixture(scope="module")
def caffe_files(tmp_path_factory):
    cv2 = pytest.importorskip("cv2")
    root = tmp_path_factory.mktemp("caffe")
    weights = random_caffe_weights(0)
    files = {"weights": weights, "root": root, "cv2": cv2}
    for variant, text in (("bvlc_alexnet", BVLC_ALEXNET_DEPLOY), ("caffenet", CAFFENET_DEPLOY)):
        (root / f"{variant}.prototxt").write_text(text)
        for fmt in ("current", "v1"):
            path = root / f"{variant}_{fmt}.caffemodel"
            path.write_bytes(pb_net(caffe_layers(weights, variant), v1=fmt == "v1"))
            files[variant, fmt] = path
    return files


def opencv_fc8_and_prob(cv2, prototxt, caffemodel, bgr_nhwc):
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setInput(np.ascontiguousarray(bgr_nhwc.transpose(0, 3, 1, 2)))  # NCHW
    fc8, prob = net.forward(["fc8", "prob"])
    return fc8.reshape(len(bgr_nhwc), -1), prob.reshape(len(bgr_nhwc), -1)


def caffe_blob_input(squares):
    """The OpenCV side's own input: centre 227 crop, RGB -> BGR, minus B,G,R 104,117,123."""
    crop = squares[:2, 14:241, 14:241, ::-1]
    return np.ascontiguousarray(crop - np.float32([104, 117, 123]), np.float32)


MEASURED = {}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["bvlc_alexnet", "caffenet"])
def test_caffe_conversion_equals_opencv(tmp_path, caffe_files, squares, variant):
    fmt = "current"
    cv2, root = caffe_files["cv2"], caffe_files["root"]
    prototxt = root / f"{variant}.prototxt"
    caffemodel = caffe_files[variant, fmt]
    model, out = convert.convert("caffe", caffemodel, tmp_path / "out", prototxt=prototxt)
    assert model.variant == variant
    loaded, config, mean = convert.read_model_dir(out)
    assert config["source"]["variant"] == variant and mean is None
    x = network_input(squares[:2], config["preprocessing"])
    assert np.array_equal(x, caffe_blob_input(squares))
    fc8_cv, prob_cv = opencv_fc8_and_prob(cv2, prototxt, caffemodel, caffe_blob_input(squares))
    assert fc8_cv.std() > 1.0 and prob_cv.max() < 0.99  # non-trivial, softmax not saturated
    fc8 = logits_model(loaded).predict(x, verbose=0)
    prob = loaded.predict(x, verbose=0)
    MEASURED[f"caffe {variant} {fmt} fc8"] = assert_close(fc8, fc8_cv)
    MEASURED[f"caffe {variant} {fmt} prob"] = assert_close(prob, prob_cv)
    conv1 = keras.Model(loaded.input, loaded.get_layer("conv1_a").output).predict(x, verbose=0)
    assert np.percentile(conv1[conv1 > 0], 90) > 50  # LRN's window sums matter
    # Negative controls: the other LRN order, or the paper's LRN, on the same weights.
    other = "caffenet" if variant == "bvlc_alexnet" else "bvlc_alexnet"
    controls = [dict(variant=other)]
    if variant == "bvlc_alexnet":
        controls.append(dict(variant=variant, lrn_bias=2.0, lrn_alpha=1e-4))
    for kwargs in controls:
        wrong = keras_alexnet.AlexNet(classifier_activation=None, **kwargs)
        weight_files.assign_weights(wrong, weight_files.keras_weights_from_model(loaded), "test")
        assert max_rel_diff(wrong.predict(x, verbose=0), fc8_cv) > 0.02


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["bvlc_alexnet", "caffenet"])
def test_a_v1_caffemodel_converts_to_the_weights_of_its_current_format_twin(caffe_files, variant):
    """Caffe's V1 file format (``layers``, enum layer types): read without the prototxt, its
    own layer list tells the variant, and it gives the very weights of the current-format
    file of the same net, which `test_caffe_conversion_equals_opencv` checks against OpenCV
    (and OpenCV reads both formats alike: `test_opencv_reads_the_v1_file`)."""
    v1_variant, v1 = weight_files.read_keras_weights(caffe_files[variant, "v1"])
    current_variant, current = weight_files.caffe_keras_weights(
        caffe_files[variant, "current"], caffe_files["root"] / f"{variant}.prototxt")
    assert v1_variant == current_variant == variant
    assert sorted(v1) == sorted(current)
    for layer in current:
        for a, b in zip(v1[layer], current[layer], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=layer)


@pytest.mark.slow
def test_opencv_reads_the_v1_file(caffe_files, squares):
    cv2, root = caffe_files["cv2"], caffe_files["root"]
    x = caffe_blob_input(squares)
    proto = root / "bvlc_alexnet.prototxt"
    cur = opencv_fc8_and_prob(cv2, proto, caffe_files["bvlc_alexnet", "current"], x)[0]
    v1 = opencv_fc8_and_prob(cv2, proto, caffe_files["bvlc_alexnet", "v1"], x)[0]
    np.testing.assert_array_equal(cur, v1)
    net = cv2.dnn.readNetFromCaffe(str(proto), str(caffe_files["bvlc_alexnet", "v1"]))
    w = net.getParam(net.getLayerId("conv2"), 0)
    np.testing.assert_array_equal(w, caffe_files["weights"]["conv2"][0])


def test_caffe_weights_only_file_needs_the_variant(tmp_path):
    weights = random_caffe_weights(2, SMALL_1000)
    path = tmp_path / "weights_only.caffemodel"
    path.write_bytes(pb_net(caffe_layers(weights, "bvlc_alexnet", weights_only=True)))
    full = tmp_path / "full_v1.caffemodel"
    full.write_bytes(pb_net(caffe_layers(weights, "bvlc_alexnet"), v1=True))
    with pytest.raises(ConversionError, match="--variant") as info:
        convert.convert_caffe(path)
    assert str(path) in str(info.value)
    model = convert.convert_caffe(path, variant="bvlc_alexnet")
    reference = convert.convert_caffe(full)  # the V1 file's own layers tell its variant
    assert reference.variant == "bvlc_alexnet"
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The prototxt and --variant must agree.
    prototxt = tmp_path / "caffenet.prototxt"
    prototxt.write_text(CAFFENET_DEPLOY)
    with pytest.raises(ConversionError, match="ambiguous"):
        convert.convert_caffe(path, prototxt=prototxt, variant="bvlc_alexnet")
    assert convert.convert_caffe(path, prototxt=prototxt).variant == "caffenet"


def test_mean_binaryproto_becomes_an_rgb_mean_image(tmp_path):
    rng = np.random.default_rng(5)
    bgr_chw = rng.uniform(0, 255, (1, 3, 256, 256)).astype(np.float32)
    mean_path = tmp_path / "mean.binaryproto"
    mean_path.write_bytes(pb_blob(bgr_chw, legacy=True))
    path = small_caffemodel(tmp_path, shapes=SMALL_1000)
    model, out = convert.convert("caffe", path, tmp_path / "dir", mean=mean_path)
    _, config, mean = convert.read_model_dir(out)
    assert config["preprocessing"]["mean"] == "image" and config["preprocessing"]["mean_rgb"] is None
    assert mean.dtype == np.float32 and mean.shape == (256, 256, 3)
    np.testing.assert_array_equal(mean[..., 0], bgr_chw[0, 2])  # R was Caffe's channel 2
    np.testing.assert_array_equal(mean, bgr_chw[0].transpose(1, 2, 0)[..., ::-1])
    assert config["source"]["mean_file"] == str(mean_path.resolve())


def test_model_directory_contract(tmp_path_factory):
    path = small_caffemodel(tmp_path_factory.mktemp("src"), shapes=SMALL_1000, variant="bvlc_alexnet")
    tmp_path = tmp_path_factory.mktemp("out")
    assert convert.main(["--from", "caffe", "--weights", str(path), "--out", str(tmp_path / "d")]) == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["config.json", "model.keras"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary leftovers
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["kind"] == "converted" and config["num_classes"] == 1000
    assert config["class_names"] == list(imagenet_class_names())
    assert config["class_index"] == "imagenet"
    assert config["preprocessing"] == {
        "crop_size": 227, "resize_size": 256, "mean": "channel", "mean_rgb": [123.0, 117.0, 104.0],
        "std_rgb": None, "channel_order": "BGR", "provenance": config["preprocessing"]["provenance"],
    }
    import hashlib
    assert config["source"] == {
        "format": "caffe", "weights": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "variant": "bvlc_alexnet",
        "prototxt": None, "mean_file": None,
    }
    assert set(config["versions"]) == {"tensorflow", "keras", "keras_alexnet"}
    # An existing directory is kept unless --overwrite.
    assert convert.main(["--from", "caffe", "--weights", str(path), "--out", str(tmp_path / "d")]) == 2
    # AlexNet(weights=DIR), keras-applications style: the variant comes from the directory.
    # (fc_units=8: this small file's fc width; the published nets have the default 4096.)
    model = keras_alexnet.AlexNet(weights=tmp_path / "d", fc_units=8)
    assert model.variant == "bvlc_alexnet"
    reference = convert.convert_caffe(path)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    also = keras_alexnet.AlexNet(weights=str(path), fc_units=8)  # a weights file directly
    assert also.variant == "bvlc_alexnet"
    with pytest.raises(ConversionError, match="fc6"):  # a model of other sizes: refused
        keras_alexnet.AlexNet(weights=str(path))
    np.testing.assert_array_equal(also.get_layer("fc6").kernel, reference.get_layer("fc6").kernel)


def test_a_converted_directory_evaluates_and_draws_every_figure(tmp_path, shared_data, capsys):
    """evaluate.py (centre and ten crops, --predict) and the figure command open a
    converted directory as they open a run: its own preprocessing, ImageNet classes."""
    import shutil
    import sys

    from keras_alexnet import visualize

    path = small_caffemodel(tmp_path, shapes=SMALL_1000, variant="caffenet")
    out = tmp_path / "caffenet"
    assert convert.main(["--from", "caffe", "--weights", str(path), "--out", str(out)]) == 0
    sample = shared_data / "imagenet-sample" / "val"
    for wnid in sorted(p.name for p in sample.iterdir())[:3]:
        shutil.copytree(sample / wnid, tmp_path / "data" / "val" / wnid)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import evaluate as cli

    for extra in ([], ["--ten-crop"]):
        results = tmp_path / "r.json"
        assert cli.main(["--top5", "--checkpoint", str(out), "--data-dir", str(tmp_path / "data"),
                         "--results-file", str(results), "--quiet", *extra]) == 0
        r = json.loads(results.read_text())
        assert r["images"] == 3 and r["num_classes"] == 1000 and r["class_index"] == "imagenet"
        assert r["preprocessing"]["channel_order"] == "BGR" and r["preprocessing"]["mean"] == "channel"
        assert r["crops_per_image"] == (10 if extra else 1)
    assert cli.main(["--checkpoint", str(out), "--predict", str(tmp_path / "data" / "val")]) == 0
    assert "(n0" in capsys.readouterr().out  # ImageNet names with their wnids
    written = visualize.main(["--run", str(out), "--images", str(tmp_path / "data" / "val"),
                              "--neighbours-from", str(tmp_path / "data" / "val"), "--k", "2"])
    no_run_figures = {"conv1_filters_change.png", "training_curves.png"}  # no recipe, no metrics
    assert [p.name for p in written] == [f for f in visualize.FIGURES if f not in no_run_figures]


# ---------------------------------------------------------------------------------------
# Guerzhoy's npy.


def guerzhoy_dict(caffe_weights):
    """What caffe-tensorflow wrote: conv W OIHW -> HWIO; FC W (out, in) -> (in, out) with
    fc6's rows reordered from (c, h, w) to (h, w, c)."""
    d = {}
    for name, (w, b) in caffe_weights.items():
        if w.ndim == 4:
            d[name] = [w.transpose(2, 3, 1, 0).copy(), b.copy()]
        elif name == "fc6":
            out = w.shape[0]
            d[name] = [w.reshape(out, 256, 6, 6).transpose(2, 3, 1, 0).reshape(9216, out).copy(), b.copy()]
        else:
            d[name] = [w.T.copy(), b.copy()]
    return d


def test_npy_equals_the_caffemodel(tmp_path, squares):
    weights = random_caffe_weights(3, SMALL_1000)
    caffemodel = tmp_path / "bvlc_alexnet.caffemodel"
    caffemodel.write_bytes(pb_net(caffe_layers(weights, "bvlc_alexnet")))
    path = tmp_path / "bvlc_alexnet.npy"
    np.save(path, guerzhoy_dict(weights), allow_pickle=True)
    # The file reads like Guerzhoy's: np.load(encoding='latin1', allow_pickle=True).item().
    assert set(np.load(path, encoding="latin1", allow_pickle=True).item()) == set(CAFFE_SHAPES)
    npy_model, out = convert.convert("npy", path, tmp_path / "npy_dir")
    caffe_model = convert.convert_caffe(caffemodel)
    assert npy_model.variant == "bvlc_alexnet"
    assert len(npy_model.weights) == len(caffe_model.weights) == 26  # 5 convs x 2 towers, 3 FC
    for a, b in zip(npy_model.weights, caffe_model.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    _, config, _ = convert.read_model_dir(out)
    assert config["source"]["format"] == "npy" and config["preprocessing"]["channel_order"] == "BGR"
    x = network_input(squares[:2], config["preprocessing"])
    np.testing.assert_array_equal(npy_model.predict(x, verbose=0), caffe_model.predict(x, verbose=0))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_npy_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    np.save(path, np.array({"conv1": [_Evil(marker)]}, dtype=object), allow_pickle=True)
    with pytest.raises(ConversionError, match="refusing") as info:
        convert.convert_npy(path)
    assert str(path) in str(info.value) and "system" in str(info.value)
    assert not marker.exists()
    # The same refusal through AlexNet(weights=...).
    with pytest.raises(ConversionError, match="refusing"):
        keras_alexnet.AlexNet(weights=str(path))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------
# Bad files: small nets (fc6 / fc7 of width 8) keep these fast; fc widths follow the file.

def small_caffemodel(tmp_path, name="small.caffemodel", shapes=None, drop=(), rename=None,
                     variant="caffenet"):
    weights = random_caffe_weights(1, shapes or SMALL_SHAPES)
    layers = [l for l in caffe_layers(weights, variant) if l[0] not in drop]
    if rename:
        layers = [(rename.get(l[0], l[0]),) + l[1:] for l in layers]
    path = tmp_path / name
    path.write_bytes(pb_net(layers))
    return path


def test_other_class_counts_are_allowed_and_need_class_names(tmp_path):
    path = small_caffemodel(tmp_path)
    model = convert.convert_caffe(path)
    assert model.variant == "caffenet" and model.output.shape == (None, 10)
    with pytest.raises(ConversionError, match="10 classes"):
        convert.convert("caffe", path, tmp_path / "d")
    names = [f"style{i}" for i in range(10)]
    _, out = convert.convert("caffe", path, tmp_path / "d", class_names=names)
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 10 and config["class_names"] == names
    assert config["class_index"] == "compact"


def test_truncated_caffemodel(tmp_path):
    path = small_caffemodel(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated") as info:
        convert.convert_caffe(path)
    assert str(path) in str(info.value)


def test_png_renamed_caffemodel(tmp_path):
    path = tmp_path / "photo.caffemodel"
    png = tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy()
    path.write_bytes(png)
    with pytest.raises(ConversionError, match="not a") as info:
        convert.convert_caffe(path, variant="bvlc_alexnet")
    assert str(path) in str(info.value)


def test_ungrouped_conv2_is_another_network(tmp_path):
    path = small_caffemodel(tmp_path, shapes=dict(SMALL_SHAPES, conv2=(256, 96, 5, 5)))
    with pytest.raises(ConversionError) as info:
        convert.convert_caffe(path)
    message = str(info.value)
    assert str(path) in message and "'conv2'" in message
    assert "(5, 5, 96, 256)" in message and "(5, 5, 48, 128)" in message


def test_fc6_of_another_input_size(tmp_path):
    path = small_caffemodel(tmp_path, shapes=dict(SMALL_SHAPES, fc6=(8, 4096)))
    with pytest.raises(ConversionError, match="fc6") as info:
        convert.convert_caffe(path)
    assert "(8, 4096)" in str(info.value) and "9216" in str(info.value)


def test_missing_layer_and_vgg_like_names(tmp_path):
    path = small_caffemodel(tmp_path, drop=("conv3",))
    with pytest.raises(ConversionError, match="missing layer.*conv3") as info:
        convert.convert_caffe(path)
    assert str(path) in str(info.value)
    vgg = small_caffemodel(tmp_path, "vgg.caffemodel", rename={"conv1": "conv1_1", "conv2": "conv1_2"})
    with pytest.raises(ConversionError, match="missing layer.*conv1, conv2") as info:
        convert.convert_caffe(vgg)
    assert "conv1_1 ((96, 3, 11, 11), (96,))" in str(info.value)


def test_failed_load_leaves_the_model_as_it_was(tmp_path):
    path = small_caffemodel(tmp_path, shapes=dict(SMALL_SHAPES, conv5=(256, 192, 5, 5)))
    model = keras_alexnet.AlexNet(variant="caffenet", classes=10, fc_units=8, seed=3)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ConversionError, match="conv5"):
        weight_files.load_weights_into(model, path)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Caffe's weights fit the paper's shapes but not its LRN: refused, not guessed.
    good = small_caffemodel(tmp_path, "good.caffemodel")
    with pytest.raises(ConversionError, match="variant 'bvlc_alexnet' or 'caffenet'"):
        keras_alexnet.AlexNet(weights=str(good), variant="paper", classes=10, fc_units=8)


# ---------------------------------------------------------------------------------------
# torchvision.


def import_torchvision():
    torch = torch_module()
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    torchvision = pytest.importorskip("torchvision")
    return torch, torchvision


@pytest.mark.slow
def test_torchvision_conversion_equals_torchvision(tmp_path, squares):
    torch, torchvision = import_torchvision()
    from torchvision import transforms

    torch.manual_seed(0)
    net = torchvision.models.alexnet().eval()
    path = tmp_path / "alexnet-random.pth"
    torch.save(net.state_dict(), path)
    model, out = convert.convert("torchvision", path, tmp_path / "tv")
    loaded, config, _ = convert.read_model_dir(out)
    assert loaded.variant == "torchvision" and loaded.count_params() == 61_100_840
    # Torch side, its own way: CenterCrop(224), /255, Normalize, NCHW.
    tv = transforms.Compose([
        transforms.CenterCrop(224),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    batch = torch.stack([tv(torch.from_numpy(s).permute(2, 0, 1) / 255.0) for s in squares])
    with torch.no_grad():
        expected = net(batch).numpy()
    assert expected.std() > 1e-3  # random weights still give distinct logits
    assert np.abs(expected - expected.mean(axis=1, keepdims=True)).max() > 1e-2
    x = network_input(squares, config["preprocessing"])
    # What evaluate.py, the figures and the export feed it: the run module's preprocessing.
    pre = runs.open_run(out).preprocessing
    top = (squares.shape[1] - pre.crop_size) // 2
    crops = squares[:, top:top + pre.crop_size, top:top + pre.crop_size]
    np.testing.assert_allclose(pre.network_input(crops), x, rtol=1e-6, atol=1e-5)
    logits = logits_model(loaded).predict(x, verbose=0)
    MEASURED["torchvision fc8"] = assert_close(logits, expected)
    probs = loaded.predict(x, verbose=0)
    MEASURED["torchvision softmax"] = assert_close(probs, torch.softmax(torch.from_numpy(expected), 1).numpy())
    # AlexNet(weights=.pth) builds the torchvision variant with the same weights.
    direct = keras_alexnet.AlexNet(weights=str(path), classifier_activation=None)
    assert direct.variant == "torchvision"
    np.testing.assert_array_equal(direct.predict(x, verbose=0), logits)


def test_torch_missing_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConversionError, match=r"keras_alexnet\[torch\]"):
        convert.convert_torchvision(tmp_path / "x.pth")


def test_torchvision_wrong_files(tmp_path):
    torch = torch_module()
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ConversionError, match="not a PyTorch") as info:
        convert.convert_torchvision(path)
    assert str(path) in str(info.value)
    other = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, other)
    with pytest.raises(ConversionError, match=r"missing layer.*conv1 \(features.0\)"):
        convert.convert_torchvision(other)


def test_report_measured_differences():
    # Not a check: prints what the equality tests measured (pytest -s shows it).
    for key, value in MEASURED.items():
        print(f"max relative difference {key}: {value:.2e}")


# BVLC/caffe models/bvlc_alexnet/deploy.prototxt, verbatim (commit 9b89154).
BVLC_ALEXNET_DEPLOY = '''name: "AlexNet"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape: { dim: 10 dim: 3 dim: 227 dim: 227 } }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param {
    lr_mult: 1
    decay_mult: 1
  }
  param {
    lr_mult: 2
    decay_mult: 0
  }
  convolution_param {
    num_output: 96
    kernel_size: 11
    stride: 4
  }
}
layer {
  name: "relu1"
  type: "ReLU"
  bottom: "conv1"
  top: "conv1"
}
layer {
  name: "norm1"
  type: "LRN"
  bottom: "conv1"
  top: "norm1"
  lrn_param {
    local_size: 5
    alpha: 0.0001
    beta: 0.75
  }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "norm1"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 3
    stride: 2
  }
}
layer {
  name: "conv2"
  type: "Convolution"
  bottom: "pool1"
  top: "conv2"
  param {
    lr_mult: 1
    decay_mult: 1
  }
  param {
    lr_mult: 2
    decay_mult: 0
  }
  convolution_param {
    num_output: 256
    pad: 2
    kernel_size: 5
    group: 2
  }
}
layer {
  name: "relu2"
  type: "ReLU"
  bottom: "conv2"
  top: "conv2"
}
layer {
  name: "norm2"
  type: "LRN"
  bottom: "conv2"
  top: "norm2"
  lrn_param {
    local_size: 5
    alpha: 0.0001
    beta: 0.75
  }
}
layer {
  name: "pool2"
  type: "Pooling"
  bottom: "norm2"
  top: "pool2"
  pooling_param {
    pool: MAX
    kernel_size: 3
    stride: 2
  }
}
layer {
  name: "conv3"
  type: "Convolution"
  bottom: "pool2"
  top: "conv3"
  param {
    lr_mult: 1
    decay_mult: 1
  }
  param {
    lr_mult: 2
    decay_mult: 0
  }
  convolution_param {
    num_output: 384
    pad: 1
    kernel_size: 3
  }
}
layer {
  name: "relu3"
  type: "ReLU"
  bottom: "conv3"
  top: "conv3"
}
layer {
  name: "conv4"
  type: "Convolution"
  bottom: "conv3"
  top: "conv4"
  param {
    lr_mult: 1
    decay_mult: 1
  }
  param {
    lr_mult: 2
    decay_mult: 0
  }
  convolution_param {
    num_output: 384
    pad: 1
    kernel_size: 3
    group: 2
  }
}
layer {
  name: "relu4"
  type: "ReLU"
  bottom: "conv4"
  top: "conv4"
}
layer {
  name: "conv5"
  type: "Convolution"
  bottom: "conv4"
  top: "conv5"
  param {
    lr_mult: 1
    decay_mult: 1
  }
  param {
    lr_mult: 2
    decay_mult: 0
  }
  convolution_param {
    num_output: 256
    pad: 1
    kernel_size: 3
    group: 2
  }
}
layer {
  name: "relu5"
  type: "ReLU"
  bottom: "conv5"
  top: "conv5"
}
layer {
  name: "pool5"
  type: "Pooling"
  bottom: "conv5"
  top: "pool5"
  pooling_param {
    pool: MAX
    kernel_size: 3
    stride: 2
  }
}
layer {
  name: "fc6"
  type: "InnerProduct"
  bottom: "pool5"
  top: "fc6"
  param {
    lr_mult: 1
    decay_mult: 1
  }
  param {
    lr_mult: 2
    decay_mult: 0
  }
  inner_product_param {
    num_output: 4096
  }
}
layer {
  name: "relu6"
  type: "ReLU"
  bottom: "fc6"
  top: "fc6"
}
layer {
  name: "drop6"
  type: "Dropout"
  bottom: "fc6"
  top: "fc6"
  dropout_param {
    dropout_ratio: 0.5
  }
}
layer {
  name: "fc7"
  type: "InnerProduct"
  bottom: "fc6"
  top: "fc7"
  param {
    lr_mult: 1
    decay_mult: 1
  }
  param {
    lr_mult: 2
    decay_mult: 0
  }
  inner_product_param {
    num_output: 4096
  }
}
layer {
  name: "relu7"
  type: "ReLU"
  bottom: "fc7"
  top: "fc7"
}
layer {
  name: "drop7"
  type: "Dropout"
  bottom: "fc7"
  top: "fc7"
  dropout_param {
    dropout_ratio: 0.5
  }
}
layer {
  name: "fc8"
  type: "InnerProduct"
  bottom: "fc7"
  top: "fc8"
  param {
    lr_mult: 1
    decay_mult: 1
  }
  param {
    lr_mult: 2
    decay_mult: 0
  }
  inner_product_param {
    num_output: 1000
  }
}
layer {
  name: "prob"
  type: "Softmax"
  bottom: "fc8"
  top: "prob"
}
'''

# BVLC/caffe models/bvlc_reference_caffenet/deploy.prototxt, verbatim (commit 9b89154).
CAFFENET_DEPLOY = '''name: "CaffeNet"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape: { dim: 10 dim: 3 dim: 227 dim: 227 } }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param {
    num_output: 96
    kernel_size: 11
    stride: 4
  }
}
layer {
  name: "relu1"
  type: "ReLU"
  bottom: "conv1"
  top: "conv1"
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 3
    stride: 2
  }
}
layer {
  name: "norm1"
  type: "LRN"
  bottom: "pool1"
  top: "norm1"
  lrn_param {
    local_size: 5
    alpha: 0.0001
    beta: 0.75
  }
}
layer {
  name: "conv2"
  type: "Convolution"
  bottom: "norm1"
  top: "conv2"
  convolution_param {
    num_output: 256
    pad: 2
    kernel_size: 5
    group: 2
  }
}
layer {
  name: "relu2"
  type: "ReLU"
  bottom: "conv2"
  top: "conv2"
}
layer {
  name: "pool2"
  type: "Pooling"
  bottom: "conv2"
  top: "pool2"
  pooling_param {
    pool: MAX
    kernel_size: 3
    stride: 2
  }
}
layer {
  name: "norm2"
  type: "LRN"
  bottom: "pool2"
  top: "norm2"
  lrn_param {
    local_size: 5
    alpha: 0.0001
    beta: 0.75
  }
}
layer {
  name: "conv3"
  type: "Convolution"
  bottom: "norm2"
  top: "conv3"
  convolution_param {
    num_output: 384
    pad: 1
    kernel_size: 3
  }
}
layer {
  name: "relu3"
  type: "ReLU"
  bottom: "conv3"
  top: "conv3"
}
layer {
  name: "conv4"
  type: "Convolution"
  bottom: "conv3"
  top: "conv4"
  convolution_param {
    num_output: 384
    pad: 1
    kernel_size: 3
    group: 2
  }
}
layer {
  name: "relu4"
  type: "ReLU"
  bottom: "conv4"
  top: "conv4"
}
layer {
  name: "conv5"
  type: "Convolution"
  bottom: "conv4"
  top: "conv5"
  convolution_param {
    num_output: 256
    pad: 1
    kernel_size: 3
    group: 2
  }
}
layer {
  name: "relu5"
  type: "ReLU"
  bottom: "conv5"
  top: "conv5"
}
layer {
  name: "pool5"
  type: "Pooling"
  bottom: "conv5"
  top: "pool5"
  pooling_param {
    pool: MAX
    kernel_size: 3
    stride: 2
  }
}
layer {
  name: "fc6"
  type: "InnerProduct"
  bottom: "pool5"
  top: "fc6"
  inner_product_param {
    num_output: 4096
  }
}
layer {
  name: "relu6"
  type: "ReLU"
  bottom: "fc6"
  top: "fc6"
}
layer {
  name: "drop6"
  type: "Dropout"
  bottom: "fc6"
  top: "fc6"
  dropout_param {
    dropout_ratio: 0.5
  }
}
layer {
  name: "fc7"
  type: "InnerProduct"
  bottom: "fc6"
  top: "fc7"
  inner_product_param {
    num_output: 4096
  }
}
layer {
  name: "relu7"
  type: "ReLU"
  bottom: "fc7"
  top: "fc7"
}
layer {
  name: "drop7"
  type: "Dropout"
  bottom: "fc7"
  top: "fc7"
  dropout_param {
    dropout_ratio: 0.5
  }
}
layer {
  name: "fc8"
  type: "InnerProduct"
  bottom: "fc7"
  top: "fc8"
  inner_product_param {
    num_output: 1000
  }
}
layer {
  name: "prob"
  type: "Softmax"
  bottom: "fc8"
  top: "prob"
}
'''
