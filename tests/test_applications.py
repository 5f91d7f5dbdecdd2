"""keras_alexnet.preprocess_input / decode_predictions: the run's preprocessing and
class names, the keras.applications way."""

import gc
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import alexnet_dirs

import keras_alexnet
from keras_alexnet import applications, data, evaluation, runs, sources, startup


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("applications")
    return {
        # 1000 classes: the ImageNet wnids, Caffe's BGR and channel mean.
        "caffe": alexnet_dirs.write_converted_dir(root / "caffe", alexnet_dirs.CAFFE_STYLE),
        # A compact run's names, torchvision's RGB with mean and std.
        "torch": alexnet_dirs.write_converted_dir(
            root / "torch", alexnet_dirs.TORCH_STYLE, classes=4,
            class_names=["disc", "ring", "square", "star"], grouping="none"),
        # A mean image (at another size than the resize size: Preprocessing resizes it).
        "image": alexnet_dirs.write_converted_dir(
            root / "image", dict(alexnet_dirs.CAFFE_STYLE, mean="image", channel_order="RGB"),
            classes=4, class_names=["a", "b", "c", "d"], grouping="none",
            mean_image=np.random.RandomState(0).uniform(60, 200, (90, 90, 3))),
    }


@pytest.fixture(scope="module")
def photo(shared_data):
    files = sorted((shared_data / "imagenet-sample" / "val").glob("*/*.JPEG"))
    if not files:
        pytest.skip("no photos in imagenet-sample/val")
    return files[0]


@pytest.mark.parametrize("name", ["caffe", "torch", "image"])
def test_preprocess_input_is_the_network_input_of_the_evaluation_pipeline(model_dirs, photo, name):
    run = runs.open_run(model_dirs[name])
    pre = run.preprocessing
    crops = pre.load([photo])  # RGB [0, 255] centre crops
    got = keras_alexnet.preprocess_input(crops, run=run)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == crops.shape
    np.testing.assert_array_equal(got, pre.network_input(crops))
    images, _ = next(iter(data.preprocessed_dataset(_one_file_source(photo), pre, batch_size=1)))
    np.testing.assert_allclose(got, images.numpy(), rtol=0, atol=1e-4)
    # one image without the batch axis, and a run given by its path
    np.testing.assert_array_equal(keras_alexnet.preprocess_input(crops[0], run=str(model_dirs[name])), got[0])


def _one_file_source(path):
    return sources.Source(
        location="test", split="test", class_names=("x",), num_classes=1, class_index="compact",
        dataset=tf.data.Dataset.from_tensor_slices((np.array([str(path)], dtype=object), np.array([0], np.int32))),
        element="path", num_examples=1, paths=np.array([str(path)], dtype=object),
        labels=np.array([0], np.int32))


def test_preprocess_input_channel_order_mean_and_std(model_dirs):
    caffe = runs.open_run(model_dirs["caffe"])
    torch = runs.open_run(model_dirs["torch"])
    x = np.zeros((67, 67, 3), np.float32) + np.array([10.0, 20.0, 30.0], np.float32)
    # Caffe: RGB minus the RGB mean, then reversed to BGR.
    np.testing.assert_allclose(keras_alexnet.preprocess_input(x, run=caffe)[0, 0],
                               [30 - 104, 20 - 117, 10 - 123], atol=1e-5)
    want = (np.array([10.0, 20.0, 30.0]) - alexnet_dirs.TORCH_STYLE["mean_rgb"]) / alexnet_dirs.TORCH_STYLE["std_rgb"]
    np.testing.assert_allclose(keras_alexnet.preprocess_input(x, run=torch)[0, 0], want, atol=1e-5)


def test_preprocess_input_works_on_tensors_and_inside_tf_data(model_dirs):
    run = runs.open_run(model_dirs["image"])
    x = np.random.RandomState(1).uniform(0, 255, (3, 67, 67, 3)).astype(np.uint8)
    want = run.preprocessing.network_input(x.astype(np.float32))
    eager = keras_alexnet.preprocess_input(tf.constant(x), run=run)
    assert tf.is_tensor(eager)
    np.testing.assert_allclose(eager.numpy(), want, atol=1e-5)
    ds = tf.data.Dataset.from_tensor_slices(x).map(lambda im: keras_alexnet.preprocess_input(im, run=run))
    np.testing.assert_allclose(np.stack(list(ds.as_numpy_iterator())), want, atol=1e-5)


def test_preprocess_input_refuses_images_of_another_size(model_dirs):
    with pytest.raises(ValueError, match=r"crop size.*\(1, 70, 70, 3\)"):
        keras_alexnet.preprocess_input(np.zeros((1, 70, 70, 3)), run=runs.open_run(model_dirs["caffe"]))
    with pytest.raises(TypeError, match="run is required"):
        applications.preprocess_input(np.zeros((67, 67, 3)), run=None)


def test_decode_predictions_gives_wnids_and_synset_names_for_an_imagenet_run(model_dirs, photo):
    run = runs.open_run(model_dirs["caffe"])
    probs = run.model(keras_alexnet.preprocess_input(run.preprocessing.load([photo]), run=run)).numpy()
    (decoded,) = keras_alexnet.decode_predictions(probs, top=5, run=run)
    (predicted,) = evaluation.predict_files(run, [photo])
    wnids = keras_alexnet.imagenet.imagenet_class_names()
    assert [wnids[i] for i, _, _ in predicted["top"]] == [wnid for wnid, _, _ in decoded]
    words = keras_alexnet.imagenet.imagenet_synset_words()
    for wnid, name, p in decoded:
        assert name == words[wnid].split(",")[0].strip()
        assert isinstance(p, float)
    np.testing.assert_allclose([p for _, _, p in decoded], [p for _, _, p in predicted["top"]], atol=1e-5)
    # keras' own example: index 0 of the ImageNet order is the tench
    one_hot = np.eye(1000, dtype=np.float32)[[0]]
    assert keras_alexnet.decode_predictions(one_hot, top=1, run=run) == [[("n01440764", "tench", 1.0)]]
    assert keras_alexnet.decode_predictions(one_hot, top=1) == [[("n01440764", "tench", 1.0)]]


def test_decode_predictions_gives_a_compact_runs_own_names(model_dirs):
    run = runs.open_run(model_dirs["torch"])
    probs = np.array([[0.1, 0.2, 0.6, 0.1], [0.4, 0.3, 0.2, 0.1]])
    assert keras_alexnet.decode_predictions(probs, top=2, run=run) == [
        [("square", "square", 0.6), ("ring", "ring", 0.2)],
        [("disc", "disc", 0.4), ("ring", "ring", 0.3)],
    ]
    # ties: the lower class index first, as predict_files ranks them
    assert [c for c, _, _ in keras_alexnet.decode_predictions([0.25] * 4, top=4, run=run)[0]] == \
        ["disc", "ring", "square", "star"]
    with pytest.raises(ValueError, match="5 classes but the run .* has 4"):
        keras_alexnet.decode_predictions(np.ones((1, 5)), run=run)


def test_importing_the_package_stays_light():
    """The package's import loads no more than the model needs, and leaves the caller's
    garbage collector as it found it: paused for the import (keras_alexnet/startup.py),
    then back to the caller's setting (here off), nothing frozen."""
    code = ("import gc, sys; gc.disable(); import keras_alexnet; assert 'keras_alexnet.runs' not in sys.modules; "
            "assert not gc.isenabled() and gc.get_freeze_count() == 0; "
            "from keras_alexnet import preprocess_input, decode_predictions; "
            "assert 'keras_alexnet.applications' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=alexnet_dirs.REPO, capture_output=True,
                         text=True, env={"PYTHONPATH": str(alexnet_dirs.REPO), "TF_CPP_MIN_LOG_LEVEL": "2",
                                         "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    assert keras_alexnet.preprocess_input is applications.preprocess_input
    assert gc.isenabled()  # this process imported it with the collector on


def test_the_collector_is_restored_when_the_paused_block_raises():
    with pytest.raises(ImportError):
        with startup.collector_paused():
            assert not gc.isenabled()
            raise ImportError("a broken install")
    assert gc.isenabled()
