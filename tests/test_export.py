"""keras_alexnet.export: the SavedModel serves what evaluate.py predicts, in a process
that cannot import keras_alexnet; the TFLite model computes what the SavedModel does.

One module fixture does the slow work once: a tiny train.py run and two converted-style
model directories (Caffe-style BGR + channel mean, grouped convs; torchvision-style RGB
+ mean + std, towers placed on GPUs that do not exist here), their SavedModels, and
one isolated process serving them all.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import alexnet_dirs

REPO = alexnet_dirs.REPO
sys.path.insert(0, str(REPO))  # evaluate.py

# Serves SavedModels with only TensorFlow: keras_alexnet is made unimportable first
# (an editable install of it is in site-packages).
SERVER = textwrap.dedent("""
    import json, sys

    class NoKerasAlexNet:
        def find_spec(self, name, path=None, target=None):
            if name == "keras_alexnet" or name.startswith("keras_alexnet."):
                raise ImportError("keras_alexnet is blocked in this process")

    sys.meta_path.insert(0, NoKerasAlexNet())
    try:
        import keras_alexnet
        importable = True
    except ImportError:
        importable = False

    import tensorflow as tf

    jobs = json.load(open(sys.argv[1]))
    out = {"keras_alexnet_importable": importable}
    for name, job in jobs.items():
        serve = tf.saved_model.load(job["saved_model"]).signatures["serving_default"]
        files = [open(p, "rb").read() for p in job["files"]]
        result = {k: v.numpy().tolist() for k, v in serve(images=tf.constant(files)).items()}
        result["top5_names"] = [[n.decode() for n in row] for row in result["top5_names"]]
        errors = []
        for bad in job.get("bad", []):
            try:
                serve(images=tf.constant([bad.encode()]))
                errors.append(None)
            except tf.errors.InvalidArgumentError as e:
                errors.append(type(e).__name__)
        result["errors"] = errors
        if errors:  # the process goes on serving
            again = serve(images=tf.constant(files[:1]))["probabilities"].numpy()
            result["after_errors"] = again.tolist()
        out[name] = result
    json.dump(out, open(sys.argv[2], "w"))
""")

BAD_INPUTS = ["not an image", ""]


def _evaluate_predictions(run_dir, photos, ten_crop, results_file):
    import evaluate

    argv = ["--checkpoint", str(run_dir), "--predict", *map(str, photos),
            "--results-file", str(results_file)]
    assert evaluate.main(argv + (["--ten-crop"] if ten_crop else [])) == 0
    return json.loads(Path(results_file).read_text())["predictions"]


@pytest.fixture(scope="module")
def photos(shared_data):
    files = sorted((shared_data / "imagenet-sample" / "val").glob("*/*.JPEG"))[:4]
    if len(files) < 4:
        pytest.skip("fewer than 4 photos in imagenet-sample/val")
    return files


@pytest.fixture(scope="module")
def exported(tmp_path_factory, photos, tiny_run):
    """Run and model directories, their SavedModels, evaluate.py's predictions and what an
    isolated process serving the SavedModels returns."""
    from keras_alexnet import export

    root = tmp_path_factory.mktemp("export")
    dirs = {
        "trained": tiny_run,  # the session's real train.py-style run (conftest)
        "caffe": alexnet_dirs.write_converted_dir(root / "caffe", alexnet_dirs.CAFFE_STYLE),
        "torch": alexnet_dirs.write_converted_dir(
            root / "torch", alexnet_dirs.TORCH_STYLE, classes=10,
            class_names=[f"class{i}" for i in range(10)], grouping="towers",
            devices=("/GPU:0", "/GPU:1")),
    }
    cases = {"trained": ("trained", False), "trained_ten": ("trained", True),
             "caffe": ("caffe", False), "torch": ("torch", False)}
    saved, expected, jobs = {}, {}, {}
    for name, (source, ten) in cases.items():
        saved[name] = root / f"sm_{name}"
        if name == "trained":  # the command line once
            assert export.main([str(dirs[source]), "--out", str(saved[name])]) == 0
        else:
            export.export_saved_model(dirs[source], saved[name], ten_crop=ten)
        expected[name] = _evaluate_predictions(dirs[source], photos, ten, root / f"{name}.json")
        jobs[name] = {"saved_model": str(saved[name]), "files": [str(p) for p in photos],
                      "bad": BAD_INPUTS if name == "trained" else []}
    (root / "jobs.json").write_text(json.dumps(jobs))
    (root / "server.py").write_text(SERVER)
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin", "HOME": str(root)}  # no PYTHONPATH
    proc = subprocess.run(
        [sys.executable, "-I", str(root / "server.py"), str(root / "jobs.json"), str(root / "served.json")],
        cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads((root / "served.json").read_text())
    return {"root": root, "dirs": dirs, "saved": saved, "expected": expected, "served": served}


def test_the_serving_process_cannot_import_keras_alexnet(exported):
    assert exported["served"]["keras_alexnet_importable"] is False


@pytest.mark.parametrize("case", ["trained", "trained_ten", "caffe", "torch"])
def test_saved_model_predicts_what_evaluate_py_predicts(exported, case):
    served, expected = exported["served"][case], exported["expected"][case]
    probs = np.array(served["probabilities"])
    want = np.array([item["probabilities"] for item in expected])
    assert probs.shape == want.shape
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-5)
    k = min(5, want.shape[1])
    assert served["top5_ids"] == [[t[0] for t in item["top"]] for item in expected]
    assert served["top5_names"] == [[t[1] for t in item["top"]] for item in expected]
    assert all(len(row) == k for row in served["top5_ids"])


def test_ten_crop_export_differs_from_the_centre_crop(exported):
    a = np.array(exported["served"]["trained"]["probabilities"])
    b = np.array(exported["served"]["trained_ten"]["probabilities"])
    assert np.abs(a - b).max() > 1e-4


def test_undecodable_input_is_an_error_of_the_call_not_of_the_process(exported):
    served = exported["served"]["trained"]
    assert served["errors"] == ["InvalidArgumentError"] * len(BAD_INPUTS)
    np.testing.assert_allclose(served["after_errors"], served["probabilities"][:1], atol=1e-6)


def _node_devices(saved_model_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].graph_def
    return {n.device for f in graph.library.function for n in f.node_def} | {n.device for n in graph.node}


def test_tower_devices_of_the_run_are_not_in_the_saved_model(exported):
    config = (exported["dirs"]["torch"] / "model.keras")
    import zipfile

    assert '"/GPU:1"' in zipfile.ZipFile(config).read("config.json").decode()
    assert not any("GPU" in d for d in _node_devices(exported["saved"]["torch"]))


def test_metadata_describes_the_export(exported):
    meta = json.loads((exported["saved"]["caffe"] / "export.json").read_text())
    assert meta["signature"] == "serving_default" and meta["crops"] == "center"
    assert meta["preprocessing"]["channel_order"] == "BGR"
    assert len(meta["class_ids"]) == 1000 and meta["class_ids"][0] == "n01440764"


def test_cli_refuses_an_existing_output(exported, capsys):
    from keras_alexnet import export

    assert export.main([str(exported["dirs"]["caffe"]), "--out", str(exported["saved"]["caffe"])]) == 2
    assert "exists" in capsys.readouterr().err


def _squares(paths, size):
    """uint8 central squares as image_lib.load_image makes them (rounded)."""
    import tensorflow as tf

    from keras_alexnet import images as image_lib

    return [tf.cast(tf.round(image_lib.load_image(str(p), size)), tf.uint8).numpy() for p in paths]


@pytest.mark.parametrize("case", ["trained", "caffe"])
def test_tflite_computes_what_the_saved_model_does_on_the_same_pixels(exported, photos, case, tmp_path):
    import tensorflow as tf

    from keras_alexnet import export, runs

    run = runs.open_run(exported["dirs"][case])
    out = tmp_path / "model.tflite"
    meta = export.export_tflite(run, out)
    assert meta["select_tf_ops"] is False
    assert "LOCAL_RESPONSE_NORMALIZATION" in meta["ops"] and "CONV_2D" in meta["ops"]
    assert not any(op.startswith("Flex") or op in ("VAR_HANDLE", "READ_VARIABLE") for op in meta["ops"])
    assert json.loads(out.with_name("model.tflite.json").read_text())["ops"] == meta["ops"]

    interpreter = export.tflite_interpreter(out)
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    size = run.preprocessing.resize_size
    assert list(inp["shape"]) == [1, size, size, 3] and inp["dtype"] == np.uint8
    serve = tf.saved_model.load(str(exported["saved"][case])).signatures["serving_default"]
    for square in _squares(photos, size):
        interpreter.set_tensor(inp["index"], square[None])
        interpreter.invoke()
        lite = interpreter.get_tensor(outp["index"])
        png = tf.io.encode_png(square)  # lossless: the SavedModel sees the same pixels
        full = serve(images=png[None])["probabilities"].numpy()
        assert lite.shape == full.shape == (1, run.num_classes)
        np.testing.assert_allclose(lite, full, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def bfloat16_run(tmp_path_factory, tiny_data):
    """A tiny run trained in-process under the mixed_bfloat16 policy (what --precision
    auto picks on CPUs with AVX512_BF16): 1 epoch of 2 steps."""
    from conftest import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("bf16") / "run", tiny_data,
                          precision="mixed_bfloat16", epochs=1)


def test_a_run_trained_in_bfloat16_exports_in_float32(bfloat16_run, photos, tmp_path):
    import keras
    import tensorflow as tf

    from keras_alexnet import evaluation, export, runs
    from keras_alexnet.preprocessing import center_crop

    # The training model was bfloat16: its saved layers carry that policy.
    saved = keras.models.load_model(bfloat16_run / "last.keras", compile=False)
    assert "mixed_bfloat16" in {layer.dtype_policy.name for layer in saved._flatten_layers()}
    run = runs.open_run(bfloat16_run)
    assert {layer.dtype_policy.name for layer in run.model._flatten_layers()} == {"float32"}
    for a, b in zip(saved.get_weights(), run.model.get_weights()):
        np.testing.assert_array_equal(a, b)

    pre = run.preprocessing
    squares = _squares(photos, pre.resize_size)
    crops = np.stack([center_crop(tf.constant(s, tf.float32), pre.crop_size).numpy() for s in squares])
    expected = evaluation.make_predict_fn(run.model)(pre.network_input(crops)).numpy()
    tolerance = 1e-4 * expected.max()

    export.export_saved_model(run, tmp_path / "saved")
    serve = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    pngs = tf.stack([tf.io.encode_png(s) for s in squares])  # lossless: the same pixels
    served = serve(images=pngs)["probabilities"].numpy()
    np.testing.assert_allclose(served, expected, rtol=0, atol=tolerance)

    meta = export.export_tflite(run, tmp_path / "model.tflite")
    assert meta["select_tf_ops"] is False and not any(op.startswith("Flex") for op in meta["ops"])
    interpreter = export.tflite_interpreter(tmp_path / "model.tflite")
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    for square, want in zip(squares, expected):
        interpreter.set_tensor(inp["index"], square[None])
        interpreter.invoke()
        np.testing.assert_allclose(interpreter.get_tensor(outp["index"])[0], want, rtol=0, atol=tolerance)
