"""The figures: their NumPy cores (`keras_alexnet.analysis`) against independent
transcriptions, what the model functions return (`keras_alexnet.activations`), and that
every figure (`keras_alexnet.figures`) and the command (`keras_alexnet.visualize`) write
real PNGs."""

import os
import shutil
import subprocess
import sys

import keras
import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

import keras_alexnet
from keras_alexnet import activations, analysis, evaluation, figures, imagenet, run_files, runs, sources, visualize
from keras_alexnet import preprocessing as pre_lib
from keras_alexnet.model import towers_to_grouped

TINY = dict(input_shape=(67, 67, 3), classes=10, fc_units=64, seed=0)


@pytest.fixture(scope="module")
def towers():
    return keras_alexnet.AlexNet(**TINY)


@pytest.fixture(scope="module")
def grouped(towers):
    model = keras_alexnet.AlexNet(grouping="grouped", **TINY)
    towers_to_grouped(towers, model)
    return model


@pytest.fixture(scope="module")
def images():
    """Four smooth random RGB images in [0, 255] at the tiny model's input size."""
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, size=(4, 9, 9, 3))
    return np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :67, :67].astype(np.float32)


# The tiny model's preprocessing: ImageNet's mean pixel (Caffe's B, G, R 104, 117, 123).
PRE = pre_lib.Preprocessing(crop_size=67, resize_size=76, mean_mode="channel",
                         mean=np.array([123.68, 116.779, 103.939]), source="test")
centred = PRE.network_input


def assert_png(path, fig, min_std=0.02):
    """A PNG of the figure's size (inches x DPI) that is not blank."""
    assert path.is_file(), path
    pixels = matplotlib.image.imread(path)
    width, height = fig.get_size_inches() * figures.DPI
    # Matplotlib truncates to whole pixels.
    assert abs(pixels.shape[0] - height) < 1 and abs(pixels.shape[1] - width) < 1
    assert float(pixels[..., :3].std()) > min_std


# ---------------------------------------------------------------------------------------
# conv1 kernels


def test_conv1_kernels_tower_a_first(towers):
    kernels = activations.conv1_kernels(towers)
    assert kernels.shape == (96, 11, 11, 3)
    a = np.asarray(towers.get_layer("conv1_a").layer.kernel)  # (11, 11, 3, 48)
    b = np.asarray(towers.get_layer("conv1_b").layer.kernel)
    for i in range(48):
        np.testing.assert_array_equal(kernels[i], a[..., i])
        np.testing.assert_array_equal(kernels[48 + i], b[..., i])
    assert not np.allclose(a, b)


@pytest.mark.parametrize("grouping", ["grouped", "none"])
def test_conv1_kernels_one_device_layouts(grouping, towers, grouped):
    model = grouped if grouping == "grouped" else keras_alexnet.AlexNet(grouping="none", **TINY)
    kernel = np.asarray(model.get_layer("conv1").kernel)  # (11, 11, 3, 96)
    kernels = activations.conv1_kernels(model)
    assert kernels.shape == (96, 11, 11, 3)
    for i in range(96):
        np.testing.assert_array_equal(kernels[i], kernel[..., i])
    if grouping == "grouped":  # the same weights as the towers, in the same order
        np.testing.assert_array_equal(kernels, activations.conv1_kernels(towers))
    assert activations.model_layout(model) == grouping


def test_kernel_grid_is_independent_of_input_size():
    full = keras_alexnet.AlexNet(classes=10, fc_units=64, seed=0, include_top=False)
    assert activations.conv1_kernels(full).shape == (96, 11, 11, 3)


def test_normalise_per_kernel():
    rng = np.random.default_rng(0)
    k = rng.normal(size=(5, 11, 11, 3)) * np.arange(1, 6)[:, None, None, None]
    k = np.concatenate([k, np.full((1, 11, 11, 3), 7.0)])
    n = analysis.normalise_per_kernel(k)
    np.testing.assert_allclose(n[:5].reshape(5, -1).min(axis=1), 0, atol=1e-7)
    np.testing.assert_allclose(n[:5].reshape(5, -1).max(axis=1), 1, atol=1e-7)
    np.testing.assert_array_equal(n[5], 0.5)  # a constant kernel
    # An affine map of each kernel on its own, so the order of the pixels is kept.
    np.testing.assert_array_equal(np.argsort(n[2], axis=None), np.argsort(k[2], axis=None))


def test_tile():
    images = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    grid = analysis.tile(images, cols=2, pad=1, pad_value=-1)
    assert grid.shape == (3 * 3 - 1, 2 * 4 - 1)
    np.testing.assert_array_equal(grid[0:2, 0:3], images[0])
    np.testing.assert_array_equal(grid[0:2, 4:7], images[1])
    np.testing.assert_array_equal(grid[6:8, 0:3], images[4])
    assert np.all(grid[6:8, 4:7] == -1)  # the empty sixth cell
    assert np.all(grid[2] == -1) and np.all(grid[:, 3] == -1)
    assert analysis.tile(np.zeros((48, 11, 11, 3)), cols=12).shape == (4 * 12 - 1, 12 * 12 - 1, 3)


# ---------------------------------------------------------------------------------------
# Colour specificity


def colour_specificity_reference(kernel):
    """Per pixel, the squared length of the RGB vector off the grey axis (1, 1, 1)/sqrt(3),
    summed, over the total squared length."""
    grey_axis = np.ones(3) / np.sqrt(3)
    off, total = 0.0, 0.0
    for row in kernel:
        for rgb in row:
            along = np.dot(rgb, grey_axis) * grey_axis
            off += np.sum((rgb - along) ** 2)
            total += np.sum(rgb**2)
    return off / total


def test_colour_specificity_hand_made_kernels():
    rng = np.random.default_rng(0)
    pattern = rng.normal(size=(11, 11))
    grey = np.stack([pattern] * 3, axis=-1)  # the same pattern in R, G and B
    red_only = np.stack([pattern, 0 * pattern, 0 * pattern], axis=-1)
    opponent = np.stack([pattern, -pattern, 0 * pattern], axis=-1)  # red against green
    grey_plus_offset = grey + 5.0  # a uniform grey offset is still grey
    blob = np.zeros((11, 11, 3))
    blob[3:8, 3:8] = (1.0, 0.2, 0.1)  # a reddish blob
    kernels = np.stack([grey, red_only, opponent, grey_plus_offset, blob, 0 * grey])
    got = analysis.colour_specificity(kernels)
    assert got.shape == (6,)
    np.testing.assert_allclose(got[:4], [0.0, 2 / 3, 1.0, 0.0], atol=1e-12)
    assert 0.3 < got[4] < 2 / 3  # coloured, but with a grey component
    assert got[5] == 0.0  # an all-zero kernel
    for k, g in zip(kernels[:5], got[:5]):
        np.testing.assert_allclose(g, colour_specificity_reference(k), atol=1e-12)
        # Invariant to the kernel's scale and sign, as a display-independent measure.
        np.testing.assert_allclose(analysis.colour_specificity(-3.5 * k), g, atol=1e-12)
    # One kernel on its own, without a batch axis.
    assert analysis.colour_specificity(red_only).shape == ()


def test_colour_specificity_of_random_weights_is_two_thirds():
    rng = np.random.default_rng(1)
    k = rng.normal(0, 0.01, size=(2000, 11, 11, 3))
    assert abs(analysis.colour_specificity(k).mean() - analysis.RANDOM_COLOUR_SPECIFICITY) < 0.01
    with pytest.raises(ValueError):
        analysis.colour_specificity(np.zeros((4, 11, 11, 4)))


# ---------------------------------------------------------------------------------------
# Predictions and neighbours


def test_nearest_neighbours_equal_brute_force():
    rng = np.random.default_rng(0)
    query, base = rng.normal(size=(7, 33)), rng.normal(size=(50, 33))
    k = 6
    expected = np.zeros((7, k), dtype=int)
    expected_d = np.zeros((7, k))
    for i in range(len(query)):
        d = np.array([np.sqrt(np.sum((query[i] - base[j]) ** 2)) for j in range(len(base))])
        expected[i] = np.argsort(d, kind="stable")[:k]
        expected_d[i] = d[expected[i]]
    idx, dist = analysis.nearest_neighbours(query, base, k, return_distances=True)
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(dist, expected_d, rtol=1e-9)
    np.testing.assert_array_equal(analysis.nearest_neighbours(query, base, k), expected)
    # A query that is in the base set finds itself first, at distance 0.
    idx, dist = analysis.nearest_neighbours(base[[3, 17]], base, 2, return_distances=True)
    np.testing.assert_array_equal(idx[:, 0], [3, 17])
    np.testing.assert_allclose(dist[:, 0], 0, atol=1e-6)
    with pytest.raises(ValueError):
        analysis.nearest_neighbours(query, base[:3], k=4)


def test_top_k():
    probs = np.array([[0.1, 0.5, 0.15, 0.25], [0.4, 0.1, 0.4, 0.1]])
    got = evaluation.top_k(probs, ["a", "b", "c", "d"], k=3)
    assert got == [[("b", 0.5), ("d", 0.25), ("c", 0.15)], [("a", 0.4), ("c", 0.4), ("b", 0.1)]]
    assert evaluation.top_k(probs, None, k=1) == [[("1", 0.5)], [("0", 0.4)]]
    with pytest.raises(ValueError):
        evaluation.top_k(probs, ["a", "b"])


def test_top5_of_the_model(towers, images):
    names = [f"class{i}" for i in range(10)]
    got = activations.top5(towers, images, names, preprocess=centred)
    probs = np.asarray(towers(centred(images), training=False))
    assert len(got) == len(images)
    for row, p in zip(got, probs):
        assert [n for n, _ in row] == [names[j] for j in np.argsort(-p, kind="stable")[:5]]
        np.testing.assert_allclose([q for _, q in row], np.sort(p)[::-1][:5], rtol=1e-5)


def conv_output_size(n, kernel, stride, pad):
    return (n + 2 * pad - kernel) // stride + 1


def test_feature_maps_shapes(towers, grouped, images):
    # The paper's conv stack (docs/paper.md §3.5) on a 67x67 input, from the arithmetic of each layer.
    s1 = conv_output_size(67, 11, 4, 0)  # conv1
    p1 = conv_output_size(s1, 3, 2, 0)  # pool1; conv2 keeps the size ("same")
    p2 = conv_output_size(p1, 3, 2, 0)  # pool2; conv3 - conv5 keep it
    sizes = {"conv1": (s1, 48), "conv2": (p1, 128), "conv3": (p2, 192), "conv4": (p2, 192), "conv5": (p2, 128)}
    maps = activations.feature_maps(towers, centred(images[0]))
    assert list(maps) == [f"{n}_{t}" for n in activations.CONV_NAMES for t in "ab"]
    for name, m in maps.items():
        size, channels = sizes[name[:5]]
        assert m.shape == (size, size, channels), name
        assert m.min() >= 0  # ReLU outputs
    # The grouped layout with the same weights: tower a is the first half of each layer.
    one = activations.feature_maps(grouped, centred(images[:1]))
    assert list(one) == list(activations.CONV_NAMES)
    for name in activations.CONV_NAMES:
        size, channels = sizes[name]
        assert one[name].shape == (size, size, 2 * channels)
        np.testing.assert_allclose(one[name][..., :channels], maps[f"{name}_a"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(one[name][..., channels:], maps[f"{name}_b"], rtol=1e-4, atol=1e-4)


def test_fc7_features_are_fc7_after_relu_in_inference_mode(towers, images):
    x = centred(images)
    feats = activations.fc7_features(towers, x, batch_size=3)
    assert feats.shape == (4, 64)
    cut = keras.Model(towers.input, towers.get_layer("fc7").output)
    np.testing.assert_allclose(feats, np.asarray(cut(x, training=False)), rtol=1e-5, atol=1e-6)
    # Independently: relu(fc6 @ W7 + b7), with fc6 taken in inference mode.
    fc6 = np.asarray(keras.Model(towers.input, towers.get_layer("fc6").output)(x, training=False))
    w, b = towers.get_layer("fc7").get_weights()
    np.testing.assert_allclose(feats, np.maximum(fc6 @ w + b, 0), rtol=1e-4, atol=1e-5)
    # No dropout: the same numbers every time and whatever the batching.
    np.testing.assert_array_equal(feats, activations.fc7_features(towers, x, batch_size=3))
    np.testing.assert_allclose(feats, activations.fc7_features(towers, images, preprocess=centred), rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Figures


def test_plot_conv1_filters_and_colour_specificity(towers, grouped, tmp_path):
    for model, tag in ((towers, "towers"), (grouped, "grouped")):
        fig = figures.plot_conv1_filters(model, tmp_path / f"f_{tag}.png")
        assert isinstance(fig, Figure)
        assert_png(tmp_path / f"f_{tag}.png", fig, min_std=0.1)
        fig = figures.plot_colour_specificity(model, tmp_path / f"c_{tag}.png")
        assert_png(tmp_path / f"c_{tag}.png", fig)
    # Without a path nothing is written and the figure is returned.
    assert isinstance(figures.plot_conv1_filters(towers), Figure)


def test_plot_activations(towers, grouped, images, tmp_path):
    for model, tag in ((towers, "towers"), (grouped, "grouped")):
        fig = figures.plot_activations(model, images[0], tmp_path / f"a_{tag}.png", max_maps=8, preprocess=centred)
        assert_png(tmp_path / f"a_{tag}.png", fig)


def test_plot_predictions_and_neighbours(towers, images, tmp_path):
    names = [f"class {i}" for i in range(10)]
    fig = figures.plot_predictions(towers, images, names, tmp_path / "p.png", labels=names[:4], preprocess=centred)
    assert_png(tmp_path / "p.png", fig)
    feats = activations.fc7_features(towers, images, preprocess=centred)
    idx, dist = analysis.nearest_neighbours(feats[:2], feats, 3, return_distances=True)
    fig = figures.plot_neighbours(images[:2], images, idx, tmp_path / "n.png", distances=dist)
    assert_png(tmp_path / "n.png", fig)


def test_figures_of_real_photos(towers, shared_data, tmp_path):
    files = sources.list_images(shared_data / "imagenet-sample" / "val")[:3]
    assert len(files) == 3
    photos = PRE.load(files)
    assert photos.shape == (3, 67, 67, 3) and photos.min() >= 0 and photos.max() <= 255
    words = imagenet.imagenet_synset_words()
    labels = [words[f.parent.name] for f in files]
    fig = figures.plot_predictions(towers, photos, labels + ["x"] * 7, tmp_path / "p.png", labels=labels, preprocess=centred)
    assert_png(tmp_path / "p.png", fig)
    feats = activations.fc7_features(towers, photos, preprocess=centred)
    idx = analysis.nearest_neighbours(feats, feats, 2)
    np.testing.assert_array_equal(idx[:, 0], [0, 1, 2])
    fig = figures.plot_neighbours(photos, photos, idx, tmp_path / "n.png")
    assert_png(tmp_path / "n.png", fig)


def test_preprocessing_load_takes_the_centre_crop(tmp_path):
    from PIL import Image

    # 40 high, 80 wide: shorter side to 76 (= round(67 * 256 / 227)) gives 76x152, then
    # the central 67x67. The left half is black, the right half white.
    array = np.zeros((40, 80, 3), np.uint8)
    array[:, 40:] = 255
    Image.fromarray(array).save(tmp_path / "half.png")
    Image.fromarray(array[..., 0]).save(tmp_path / "grey.png")  # one channel
    for image in PRE.load([tmp_path / "half.png", tmp_path / "grey.png"]):
        assert image.shape == (67, 67, 3) and image.dtype == np.float32
        assert image[:, :30].max() < 1 and image[:, 37:].min() > 254


WRITE_CSV = """epoch,loss,top1_error,top5_error,val_loss,val_top1_error,val_top5_error,lr
1,6.9,0.999,0.995,6.9,0.999,0.995,0.01
2,5.1,0.90,0.75,5.3,0.92,0.78,0.01
3,4.0,0.80,0.60,4.4,0.85,0.66,0.001
4,3.6,0.74,0.52,4.1,0.82,0.62,0.0001
"""


def test_read_metrics_and_training_curves(tmp_path):
    (tmp_path / "metrics.csv").write_text(WRITE_CSV)
    metrics = run_files.read_metrics(tmp_path)  # a run directory
    assert set(metrics) == {"epoch", "loss", "top1_error", "top5_error", "val_loss", "val_top1_error", "val_top5_error", "lr"}
    np.testing.assert_array_equal(metrics["lr"], [0.01, 0.01, 0.001, 0.0001])
    fig = figures.plot_training_curves(metrics, tmp_path / "curves.png", title="Training curves: runs/x")
    assert_png(tmp_path / "curves.png", fig)
    assert fig.get_suptitle() == "Training curves: runs/x"  # the run's, not the last panel's
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "top-1 error", "top-5 error", "learning rate"]
    assert fig.axes[3].get_yscale() == "log"
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2, 2, 1]  # train and val


def test_training_curves_accept_accuracy_columns_and_missing_ones(tmp_path):
    path = tmp_path / "keras_log.csv"
    path.write_text(
        "epoch,loss,top1_accuracy,val_top5_accuracy,learning_rate\n"
        "0,2.3,0.10,0.50,0.01\n1,2.0,0.30,0.70,\n2,1.8,0.45,0.85,0.001\n"
    )
    series = analysis.training_series(run_files.read_metrics(path))
    np.testing.assert_allclose(series["top1"]["train"], [0.9, 0.7, 0.55])
    assert series["top1"]["val"] is None and series["top1"]["from_accuracy"]
    np.testing.assert_allclose(series["top5"]["val"], [0.5, 0.3, 0.15])
    assert np.isnan(series["lr"][1])  # an empty cell
    fig = figures.plot_training_curves(run_files.read_metrics(path), tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png", fig)
    assert fig.get_suptitle() == "Training curves"  # the default title
    assert [ax.get_title() for ax in fig.axes if ax.axison] == [
        "loss", "top-1 error (1 - accuracy)", "top-5 error (1 - accuracy)", "learning rate",
    ]
    (tmp_path / "nothing.csv").write_text("epoch,foo\n1,2\n")
    with pytest.raises(ValueError, match="nothing.csv"):
        figures.plot_training_curves(run_files.read_metrics(tmp_path / "nothing.csv"), title="nothing.csv")


def test_record_training_curves_draws_into_the_run(tmp_path, capsys):
    """The hook train.py gives `training.train`: the run's curves, titled with the run."""
    (tmp_path / "metrics.csv").write_text(WRITE_CSV)
    written = figures.record_training_curves(tmp_path)
    path = tmp_path / run_files.FIGURES_DIR / "training_curves.png"
    assert written == {"curves": str(path)}
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    # Without metrics it says so and returns None for the path (never fatal).
    assert figures.record_training_curves(tmp_path / "empty") == {"curves": None}
    assert "Could not draw the training curves" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# The command


def test_command_writes_every_figure(tiny_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "figures"
    written = visualize.main([
        "--run", str(tiny_run), "--out", str(out), "--images", str(tiny_data / "val"),
        "--neighbours-from", str(tiny_data / "train"), "--max-base", "10", "--k", "3",
    ])
    assert [p.name for p in written] == list(visualize.FIGURES)  # what the README promises, in order
    printed = capsys.readouterr().out
    for name in visualize.FIGURES:
        assert f"wrote {out / name}" in printed
        assert float(matplotlib.image.imread(out / name)[..., :3].std()) > 0.02
    recipe = runs.open_run(tiny_run).recipe
    assert (f"preprocessing: {tiny_run / 'config.json'}; shorter side {recipe.resize_size}, centre crop "
            f"{recipe.crop_size}, mean image") in printed
    assert "neighbours among 10 images" in printed


def test_command_writes_only_what_its_inputs_allow(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "metrics.csv").unlink()
    (run / "best.keras").unlink()  # falls back to last.keras
    written = visualize.main(["--run", str(run)])
    assert [p.name for p in written] == ["conv1_filters.png", "conv1_filters_change.png", "colour_specificity.png"]
    assert all(p.parent == run / "figures" for p in written)
    printed = capsys.readouterr().out
    assert "last.keras" in printed and "skipping training_curves.png" in printed


def test_conv1_change_is_trained_minus_initial(towers):
    """With ``initial``, the figure draws each kernel minus its initial value: against an
    all-zero start it is the plain figure; against a shifted copy it is not."""

    def mosaics(fig):
        return [np.asarray(ax.images[0].get_array()) for ax in fig.axes]

    zero = keras_alexnet.AlexNet(**TINY)
    zero.set_weights([np.zeros_like(w) for w in towers.get_weights()])
    plain = figures.plot_conv1_filters(towers)
    change = figures.plot_conv1_filters(towers, initial=zero)
    assert "minus their initial values" in change._suptitle.get_text()
    for a, b in zip(mosaics(plain), mosaics(change)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    rng = np.random.default_rng(0)
    shifted = keras_alexnet.AlexNet(**TINY)
    shifted.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in towers.get_weights()])
    assert not np.allclose(mosaics(plain)[0], mosaics(figures.plot_conv1_filters(towers, initial=shifted))[0])


def test_command_missing_run_or_model_names_the_path(tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        visualize.main(["--run", str(missing), "--out", str(tmp_path / "out")])
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(run_files.RunNotFoundError, match=r"empty_run.*best\.keras.*last\.keras"):
        visualize.main(["--run", str(tmp_path / "empty_run")])
    assert not (tmp_path / "out").exists()
    # From the shell: one line naming the path, no traceback.
    result = subprocess.run(
        [sys.executable, "-m", "keras_alexnet.visualize", "--run", str(missing), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120,
    )
    assert result.returncode != 0
    assert f"error: Checkpoint not found: {missing} does not exist." in result.stderr
    assert "Traceback" not in result.stderr
