"""Tests of keras_alexnet.evaluation and evaluate.py.

References are independent of the code under test: top-k counts are made by hand (and
checked against `tf.math.in_top_k`), the ten-crop prediction is recomputed from NumPy
slices of the decoded images, and a colour model whose answer is a closed-form function
of the mean pixel shows whether the run's preprocessing (mean image, class order) was
used. The end-to-end test trains the built-in default for a few steps and evaluates it
through the command line.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_alexnet
from keras_alexnet import data, evaluation, imagenet, recipes, run_files, runs, sources
from keras_alexnet.model import outputs_probabilities
from keras_alexnet import stats as stats_lib

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SAMPLE = SHARED / "imagenet-sample" / "val"
TFDS_LABELS = (
    Path(__import__("importlib").util.find_spec("tensorflow_datasets").submodule_search_locations[0])
    / "datasets" / "imagenet2012" / "labels.txt"
)
sys.path.insert(0, str(REPO))
import evaluate as cli  # noqa: E402  (the top-level script)


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def make_stats(mean_image, class_names=("x",)):
    mean_image = np.asarray(mean_image, np.float32)
    return stats_lib.DatasetStats(
        mean_image=mean_image, channel_mean=mean_image.reshape(-1, 3).mean(0).astype(np.float64),
        covariance=np.eye(3), eigenvalues=np.ones(3), eigenvectors=np.eye(3), num_images=1,
        num_undecodable=0, num_non_image=0, class_names=tuple(class_names),
        resize_size=mean_image.shape[0], source="test",
    )


def write_run(run_dir, models, recipe, class_names, class_index="compact", mean_image=None):
    """A run directory as train.py lays it out, written with the run module's writers:
    config.json, stats.npz, *.keras (models chosen by the test)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        run_files.atomic_save_model(model, run_dir / name)
    run_files.write_config(run_dir, {"recipe": recipe, "num_classes": len(class_names),
                                "class_names": list(class_names), "class_index": class_index, "data": {}})
    if mean_image is not None:
        run_files.write_stats(run_dir, make_stats(mean_image, class_names))
    return run_dir


# --------------------------------------------------------------------------- counting

# Rows of 7 class scores; HIGHER[i] = how many classes score strictly above the label,
# worked out by hand. A label is in the top k when HIGHER < k (ties at the k-th place
# count, as tf.math.in_top_k documents); a row with NaN never counts.
ROWS = np.array([
    [0.50, 0.20, 0.10, 0.10, 0.05, 0.05, 0.00],  # label 0, the unique maximum
    [0.30, 0.30, 0.20, 0.10, 0.05, 0.05, 0.00],  # label 1 ties the maximum
    [0.40, 0.20, 0.10, 0.10, 0.10, 0.10, 0.00],  # label 5: 0.1 ties places 3 to 6
    [0.30, 0.20, 0.12, 0.10, 0.07, 0.07, 0.07],  # label 6: ties the 5th place
    [0.25, 0.20, 0.15, 0.15, 0.10, 0.10, 0.05],  # label 6: the last
    [0.10, 0.60, 0.10, 0.10, 0.05, 0.05, 0.00],  # label 0, tied 2nd with 2 and 3
    [np.nan, 0.9, 0.1, 0.0, 0.0, 0.0, 0.0],      # label 1: a non-finite row
])
LABELS = np.array([0, 1, 5, 6, 6, 0, 1])
HIGHER = [0, 0, 2, 4, 6, 1, None]  # None: never counts


def hand_count(k):
    return sum(1 for h in HIGHER if h is not None and h < k)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_topk_counts_equal_hand_counts_and_tf_in_top_k(k):
    expected = {1: 2, 2: 3, 3: 4, 5: 5, 7: 6}[k]
    assert hand_count(k) == expected
    assert evaluation.topk_counts(ROWS, LABELS, k) == expected
    reference = tf.math.in_top_k(tf.constant(LABELS), tf.constant(ROWS, tf.float32), k).numpy()
    np.testing.assert_array_equal(evaluation.in_top_k(ROWS, LABELS, k), reference)


def test_topk_rejects_labels_outside_the_classes_and_bad_k():
    with pytest.raises(ValueError, match="label 7 is outside the model's 7 classes"):
        evaluation.topk_counts(ROWS[:1], [7], 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        evaluation.topk_counts(ROWS, LABELS, 0)


def identity_model(classes=7):
    return keras.Sequential([keras.Input((classes,)), keras.layers.Identity()])


def test_evaluate_counts_over_uneven_batches_like_the_hand_counts():
    finite = ROWS[:6], LABELS[:6]
    ds = tf.data.Dataset.from_tensor_slices((finite[0].astype(np.float32), finite[1])).batch(4)
    result = evaluation.evaluate(identity_model(), ds, ks=(1, 2, 5), progress=False)
    assert result["images"] == 6 and result["skipped"] is None
    hand = {k: sum(1 for h in HIGHER[:6] if h < k) for k in (1, 2, 5)}
    assert {k: result[f"top{k}_correct"] for k in (1, 2, 5)} == hand == {1: 2, 2: 3, 5: 5}
    assert result["top1_error"] == pytest.approx(1 - 2 / 6)
    assert result["top5_error"] == pytest.approx(1 - 5 / 6)
    assert result["crops_per_image"] == 1 and result["num_classes"] == 7


def test_evaluate_ten_crops_averages_each_images_crops():
    # Ten rows per image whose mean is the image's row of ROWS, but whose single crops
    # would each vote for a different class: only the average gives the hand counts.
    # Scores are multiples of 1/128, so every sum is exact in float32 and the ties of
    # ROWS stay ties after averaging.
    rng = np.random.default_rng(0)
    base = np.round(ROWS[:6] * 100) / 128
    noise = rng.integers(-40, 41, size=(6, 10, 7)).astype(np.float64)
    noise[:, 9] = -noise[:, :9].sum(axis=1)
    crops = (base[:, None, :] + noise / 128).astype(np.float32)
    single = sum(evaluation.topk_counts(crops[:, i], LABELS[:6], 1) for i in range(10)) / 10
    assert single != 2  # one crop alone counts differently
    ds = tf.data.Dataset.from_tensor_slices((crops, LABELS[:6])).batch(4)
    result = evaluation.evaluate(identity_model(), ds, crops="ten", ks=(1, 2, 5),
                                 from_logits=False, progress=False, keep_probs=True)
    np.testing.assert_allclose(result["probs"], base, atol=1e-6)
    assert [result[f"top{k}_correct"] for k in (1, 2, 5)] == [2, 3, 5]
    assert result["crops"] == "ten" and result["crops_per_image"] == 10
    with pytest.raises(ValueError, match="needs batches of rank 3"):
        evaluation.evaluate(identity_model(), ds.unbatch().batch(60).map(
            lambda x, y: (tf.reshape(x, [-1, 7]), tf.repeat(y, 10))), crops="ten", progress=False)


# --------------------------------------------------------------------------- ten crops

CROP, RESIZE = 67, 76


def sensitive_alexnet(classes=5):
    """A tiny AlexNet whose softmax moves with its input (the default init's biases of 1
    make an untrained network's outputs almost constant)."""
    return keras_alexnet.AlexNet(input_shape=(CROP, CROP, 3), classes=classes, fc_units=32, seed=0,
                                 positive_bias=0.0, weight_stddev=0.05)


def test_ten_crop_equals_softmax_average_over_numpy_crops(tmp_path):
    rng = np.random.default_rng(1)
    model = sensitive_alexnet()
    # Sizes whose shorter side is already RESIZE: no resampling, so NumPy can follow.
    shapes = {"a": [(RESIZE, RESIZE), (RESIZE, 90)], "b": [(100, RESIZE)]}
    for cls, sizes in shapes.items():
        for i, (h, w) in enumerate(sizes):
            coarse = rng.uniform(0, 255, (h // 8 + 1, w // 8 + 1, 3))
            image = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:h, :w] + rng.normal(0, 20, (h, w, 3))
            save_png(tmp_path / cls / f"{i}.png", np.clip(image, 0, 255))
    mean_image = rng.uniform(60, 180, (RESIZE, RESIZE, 3)).astype(np.float32)
    source = sources.folder_source(tmp_path, None)

    far, mid = RESIZE - CROP, (RESIZE - CROP) // 2
    windows = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
    reference, centre = [], []
    for path in source.paths:
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float32)
        h, w = pixels.shape[:2]
        top, left = (h - RESIZE) // 2, (w - RESIZE) // 2
        square = pixels[top:top + RESIZE, left:left + RESIZE] - mean_image
        crops = [square[t:t + CROP, l:l + CROP] for t, l in windows]
        crops += [c[:, ::-1] for c in crops]
        probs = model.predict(np.stack(crops), verbose=0)
        reference.append(probs.mean(axis=0))
        centre.append(probs[4])
    reference, centre = np.array(reference), np.array(centre)
    assert np.abs(reference - centre).max() > 1e-3  # ten crops differ from the centre one

    stats = make_stats(mean_image)
    ten = data.evaluation_dataset(source, 2, stats=stats, crops="ten", crop_size=CROP, resize_size=RESIZE)
    direct = np.concatenate([evaluation.ten_crop_probs(model, x) for x, _ in ten])
    np.testing.assert_allclose(direct, reference, atol=1e-5)
    result = evaluation.evaluate(model, ten, crops="ten", progress=False, keep_probs=True)
    np.testing.assert_allclose(result["probs"], reference, atol=1e-5)
    assert result["top1_correct"] == evaluation.topk_counts(reference, source.labels, 1)
    one = data.evaluation_dataset(source, 2, stats=stats, crop_size=CROP, resize_size=RESIZE)
    result = evaluation.evaluate(model, one, progress=False, keep_probs=True)
    np.testing.assert_allclose(result["probs"], centre, atol=1e-5)


def test_logits_models_are_softmaxed_before_averaging():
    logits = keras_alexnet.AlexNet(input_shape=(CROP, CROP, 3), classes=4, fc_units=16, seed=0,
                                   classifier_activation=None)
    assert not outputs_probabilities(logits)
    assert outputs_probabilities(sensitive_alexnet(4))
    crops = np.random.default_rng(0).normal(0, 50, (2, 10, CROP, CROP, 3)).astype(np.float32)
    raw = logits.predict(crops.reshape(-1, CROP, CROP, 3), verbose=0).reshape(2, 10, 4)
    expected = tf.nn.softmax(raw, axis=-1).numpy().mean(axis=1)
    np.testing.assert_allclose(evaluation.ten_crop_probs(logits, crops), expected, atol=1e-6)


# --------------------------------------------------------------------------- runs

# The colour model: the softmax of 0.05 x (mean pixel of the crop); with the run's mean
# (150, 100, 0) subtracted its answer is the largest channel of (colour - mean).
RUN_MEAN = np.array([150.0, 100.0, 0.0])
COLOURS = {  # folder -> colours of its images; the run's class order is red, green, blue
    "red": [(250, 100, 50), (250, 100, 50)],  # -> (100, 0, 50): red
    "green": [(200, 180, 60), (200, 180, 60)],  # -> (50, 80, 60): green (red without the mean)
    "blue": [(100, 100, 90), (100, 100, 90), (255, 20, 10)],  # -> blue, blue, (105, -80, 10): red
}
CLASS_NAMES = ("red", "green", "blue")  # not sorted: the folders' sorted order differs


def colour_model(sign=1.0, lam=False):
    inputs = keras.Input((CROP, CROP, 3), name="image")
    x = inputs
    if lam:
        x = keras.layers.Lambda(lambda t: t * 1.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax",
                                 kernel_initializer=keras.initializers.Constant(sign * 0.05 * np.eye(3)),
                                 bias_initializer="zeros")(x)
    return keras.Model(inputs, outputs)


def colour_probs(colour, mean=RUN_MEAN, sign=1.0):
    z = sign * 0.05 * (np.asarray(colour, np.float64) - mean)
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    for cls, colours in COLOURS.items():
        for i, colour in enumerate(colours):
            save_png(root / "data" / "val" / cls / f"{i}.png", np.full((80, 100, 3), colour))
    (root / "data" / "val" / "red" / "broken.png").write_bytes(b"not an image")
    (root / "data" / "val" / "notes.txt").write_text("not an image")
    recipe = {"crop_size": CROP, "resize_size": RESIZE, "mean": "image"}
    mean_image = np.broadcast_to(RUN_MEAN, (RESIZE, RESIZE, 3))
    # best.keras is the colour model; last.keras answers the opposite.
    write_run(root / "run", {"best.keras": colour_model(), "last.keras": colour_model(-1.0)},
              recipe, CLASS_NAMES, mean_image=mean_image)
    return root


def expected_top1_error(mean=RUN_MEAN, sign=1.0):
    pairs = [(CLASS_NAMES.index(c), colour) for c, cs in COLOURS.items() for colour in cs]
    probs = np.array([colour_probs(colour, mean, sign) for _, colour in pairs])
    labels = np.array([label for label, _ in pairs])
    hits = tf.math.in_top_k(tf.constant(labels), tf.constant(probs, tf.float32), 1).numpy()
    return 1 - hits.mean()


def run_cli(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_evaluates_a_run_with_its_preprocessing(colour_run, tmp_path, capsys):
    assert expected_top1_error() == pytest.approx(1 / 7)
    results = tmp_path / "r.json"
    code, out, _ = run_cli(["--top5", "--checkpoint", str(colour_run / "run"), "--data-dir",
                            str(colour_run / "data"), "--results-file", str(results), "--quiet"], capsys)
    assert code == 0
    r = json.loads(results.read_text())
    assert r["checkpoint"] == str(colour_run / "run" / "best.keras")
    assert (r["images"], r["skipped"], r["listed"], r["non_image_files"]) == (7, 1, 8, 1)
    assert r["top1_error"] == pytest.approx(1 / 7) and r["top1_correct"] == 6
    assert r["top5_error"] == 0.0 and r["crops"] == "center" and r["crops_per_image"] == 1
    assert r["images_per_second"] == pytest.approx(r["images"] / r["seconds"])
    assert r["preprocessing"] == {"crop_size": CROP, "resize_size": RESIZE, "mean": "image",
                                  "mean_rgb": None, "std_rgb": None, "channel_order": "RGB",
                                  "stats": str(colour_run / "run" / "stats.npz"),
                                  "source": str(colour_run / "run" / "config.json"), "overrides": []}
    table = out[out.index("crops"):]
    for column in ("images", "skipped", "top-1 error", "top-5 error", "seconds", "images/s"):
        assert column in table
    assert re.search(r"center \(1\)\s+7\s+1\s+14\.29%\s+0\.00%", table)

    # Top-1 only without --top5; ten crops of a flat image give the same answer.
    code, out, _ = run_cli(["--ten-crop", "--checkpoint", str(colour_run / "run" / "best.keras"),
                            "--data-dir", str(colour_run / "data"), "--results-file", str(results),
                            "--quiet"], capsys)
    r = json.loads(results.read_text())
    assert code == 0 and "top5_error" not in r and "top-5" not in out
    assert (r["crops"], r["crops_per_image"], r["images"]) == ("ten", 10, 7)
    assert r["top1_error"] == pytest.approx(1 / 7)


def test_explicit_mean_none_overrides_the_run_and_changes_the_answer(colour_run, tmp_path, capsys):
    results = tmp_path / "r.json"
    code, out, _ = run_cli(["--checkpoint", str(colour_run / "run"), "--data-dir", str(colour_run / "data"),
                            "--mean", "none", "--results-file", str(results), "--quiet"], capsys)
    r = json.loads(results.read_text())
    assert code == 0 and "overriding the run's preprocessing: mean 'none'" in out
    assert r["top1_error"] == pytest.approx(expected_top1_error(mean=np.zeros(3))) == pytest.approx(5 / 7)


def test_run_directory_prefers_best_then_last(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    for name in ("best.keras", "last.keras", "checkpoints/epoch-0002.keras"):
        (run / name).write_bytes(b"")
    assert runs.find_run(run) == (run / "best.keras", run)
    assert runs.find_run(run / "last.keras") == (run / "last.keras", run)
    assert runs.find_run(run / "checkpoints" / "epoch-0002.keras") == (
        run / "checkpoints" / "epoch-0002.keras", run)
    (run / "best.keras").unlink()
    assert runs.find_run(run) == (run / "last.keras", run)
    (run / "last.keras").unlink()
    with pytest.raises(run_files.RunNotFoundError, match=re.escape(str(run / "best.keras"))):
        runs.find_run(run)
    with pytest.raises(run_files.RunNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        runs.find_run(tmp_path / "nope")
    (tmp_path / "model.h5").write_bytes(b"")
    with pytest.raises(run_files.RunError, match="not a .keras model file"):
        runs.find_run(tmp_path / "model.h5")


def test_last_keras_is_used_without_best(colour_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(colour_run / "run", run)
    (run / "best.keras").unlink()
    checkpoint = runs.open_run(run)
    assert checkpoint.model_path == run / "last.keras"
    source = evaluation.load_eval_source(checkpoint, colour_run / "data")
    r = evaluation.run_evaluation(checkpoint, source, top5=False, progress=False)
    assert r["checkpoint"] == str(run / "last.keras") and "top5_error" not in r
    # The opposite model picks the smallest channel of (colour - mean): all wrong here.
    assert r["top1_error"] == pytest.approx(expected_top1_error(sign=-1.0)) == 1.0


def test_bare_keras_needs_stats_or_mean_none(colour_run, tmp_path, capsys):
    bare = tmp_path / "elsewhere" / "model.keras"
    bare.parent.mkdir()
    shutil.copy(colour_run / "run" / "best.keras", bare)
    with pytest.raises(run_files.RunError) as error:
        runs.open_run(bare)
    for part in (str(bare), "--stats", "--mean none", "config.json"):
        assert part in str(error.value)
    code, _, err = run_cli(["--checkpoint", str(bare), "--data-dir", str(colour_run / "data")], capsys)
    assert code == 2 and "--mean none" in err and str(bare) in err
    # With the statistics given, the same numbers as the run (256/227 of 67 is 76).
    checkpoint = runs.open_run(bare, stats=colour_run / "run" / "stats.npz",
                                            class_index="compact")
    pre = checkpoint.preprocessing
    assert (pre.resize_size, pre.mean_mode, checkpoint.class_names) == (RESIZE, "image", None)
    source = evaluation.load_eval_source(checkpoint, colour_run / "data")
    assert source.class_names == ("blue", "green", "red")  # no run: sorted folder order
    with pytest.raises(run_files.RunError, match="would not be used: the mean is 'none'"):
        runs.open_run(bare, stats=colour_run / "run" / "stats.npz", mean="none")


def test_class_count_mismatch_names_both_numbers_and_paths(colour_run, tmp_path, capsys):
    data_dir = tmp_path / "four"
    shutil.copytree(colour_run / "data", data_dir)
    save_png(data_dir / "val" / "yellow" / "0.png", np.full((80, 80, 3), (250, 250, 0)))
    bare = tmp_path / "model.keras"
    shutil.copy(colour_run / "run" / "best.keras", bare)
    code, _, err = run_cli(["--checkpoint", str(bare), "--mean", "none", "--data-dir", str(data_dir)], capsys)
    assert code == 2
    assert f"The model {bare} has 3 classes but the data {data_dir / 'val'} has 4" in err
    # A run refuses a class it never saw, naming the folder.
    code, _, err = run_cli(["--checkpoint", str(colour_run / "run"), "--data-dir", str(data_dir)], capsys)
    assert code == 2 and "yellow" in err and str(data_dir / "val") in err


def test_run_class_order_is_kept_when_a_class_is_missing(colour_run, tmp_path):
    data_dir = tmp_path / "two"
    for cls in ("green", "blue"):
        shutil.copytree(colour_run / "data" / "val" / cls, data_dir / "val" / cls)
    checkpoint = runs.open_run(colour_run / "run")
    source = evaluation.load_eval_source(checkpoint, data_dir)
    assert source.class_names == CLASS_NAMES and source.num_classes == 3
    assert sorted(set(source.labels.tolist())) == [1, 2]  # green, blue in the run's order
    r = evaluation.run_evaluation(checkpoint, source, progress=False)
    assert r["top1_correct"] == 4 and r["images"] == 5


def test_run_problems_are_clear_errors(colour_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(colour_run / "run", run)
    (run / "stats.npz").unlink()
    with pytest.raises(run_files.RunNotFoundError, match=re.escape(str(run / "stats.npz"))):
        runs.open_run(run)
    config = json.loads((run / "config.json").read_text())
    config["recipe"]["crop_size"], config["recipe"]["resize_size"] = 99, 112
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(run_files.RunError, match="takes 67x67 inputs but its run .* says crop_size 99"):
        runs.open_run(run, stats=colour_run / "run" / "stats.npz").model
    (run / "best.keras").write_bytes(b"truncated")
    with pytest.raises(run_files.RunError, match=re.escape(f"Cannot load the model {run / 'best.keras'}")):
        runs.open_run(run, stats=colour_run / "run" / "stats.npz").model


def test_bad_paths_exit_2_before_loading_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--checkpoint", str(tmp_path / "missing"), "--data-dir", str(tmp_path)])
    assert exit_.value.code == 2 and str(tmp_path / "missing") in capsys.readouterr().err
    # The script itself, in a subprocess: flags are checked before TensorFlow is imported.
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), "--checkpoint", str(tmp_path), "--data-dir",
         str(tmp_path / "no-data")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"--data-dir: {tmp_path / 'no-data'} does not exist" in proc.stderr


def test_cli_evaluates_a_tfds_dataset_prepared_offline(tmp_path, capsys):
    """``--tfds imagenet2012``: prepared from tiny manual tars (nothing downloaded),
    indexed in the run's ImageNet order."""
    import io
    import tarfile

    def add(tar, name, array):
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(array, np.uint8)).save(buffer, "JPEG")
        info = tarfile.TarInfo(name)
        info.size = len(buffer.getvalue())
        tar.addfile(info, io.BytesIO(buffer.getvalue()))

    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as outer:
        inner = io.BytesIO()
        with tarfile.open(fileobj=inner, mode="w") as tar:
            add(tar, "n01440764_0.JPEG", np.full((40, 50, 3), 90))
        info = tarfile.TarInfo("n01440764.tar")
        info.size = len(inner.getvalue())
        outer.addfile(info, io.BytesIO(inner.getvalue()))
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as tar:
        for k in (1, 2, 3):
            add(tar, f"ILSVRC2012_val_{k:08d}.JPEG", np.full((40, 50, 3), 30 * k))
    # A model that always answers the class of validation image 2, in ImageNet order.
    wnids = imagenet.imagenet_class_names()
    val_wnids = (TFDS_LABELS.parent / "validation_labels.txt").read_text().split()[:3]
    assert len(set(val_wnids)) == 3
    inputs = keras.Input((CROP, CROP, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    bias = np.full(1000, -5.0)
    bias[wnids.index(val_wnids[1])] = 5.0
    outputs = keras.layers.Dense(1000, activation="softmax", kernel_initializer="zeros",
                                 bias_initializer=keras.initializers.Constant(bias))(x)
    run = write_run(tmp_path / "run", {"best.keras": keras.Model(inputs, outputs)},
                    {"crop_size": CROP, "resize_size": RESIZE, "mean": "none"}, wnids, class_index="imagenet")
    (tmp_path / "tfds").mkdir()
    results = tmp_path / "r.json"
    code, out, err = run_cli(["--top5", "--checkpoint", str(run), "--tfds", "imagenet2012", "--data-dir",
                              str(tmp_path / "tfds"), "--manual-dir", str(manual), "--results-file",
                              str(results), "--quiet"], capsys)
    assert code == 0, err
    r = json.loads(results.read_text())
    assert (r["data"], r["split"], r["images"], r["class_index"]) == ("tfds:imagenet2012", "validation", 3, "imagenet")
    assert r["top1_correct"] == 1  # image 2 only: its label is its wnid's ImageNet index
    assert r["top5_error"] == 0.0  # the others tie 998 classes at the 2nd place: found


# --------------------------------------------------------------------------- safe loading


def test_lambda_model_is_refused_unless_unsafe_load(colour_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(colour_run / "run", run, ignore=shutil.ignore_patterns("*.keras"))
    colour_model(lam=True).save(run / "best.keras")
    with pytest.raises(run_files.UnsafeModelError) as error:
        runs.load_model(run / "best.keras")
    assert str(run / "best.keras") in str(error.value) and "--unsafe-load" in str(error.value)
    code, _, err = run_cli(["--checkpoint", str(run), "--data-dir", str(colour_run / "data")], capsys)
    assert code == 2 and "Refusing to load" in err and "--unsafe-load" in err
    results = tmp_path / "r.json"
    code, _, _ = run_cli(["--checkpoint", str(run), "--data-dir", str(colour_run / "data"), "--unsafe-load",
                          "--results-file", str(results), "--quiet"], capsys)
    assert code == 0 and json.loads(results.read_text())["top1_error"] == pytest.approx(1 / 7)


# --------------------------------------------------------------------------- class names


def test_imagenet_human_names_align_with_the_wnid_order():
    names = imagenet.imagenet_class_names_human()
    wnids = [line.strip() for line in TFDS_LABELS.read_text().splitlines() if line.strip()]
    assert len(names) == 1000 and list(imagenet.imagenet_synset_words()) == wnids
    assert names[0] == "tench, Tinca tinca" and wnids[0] == "n01440764"
    assert names[1] == "goldfish, Carassius auratus" and wnids[1] == "n01443537"
    assert names[999].startswith("toilet tissue") and wnids[999] == "n15075141"
    assert imagenet.imagenet_class_names_human(short=True)[:2] == ("tench", "goldfish")
    original = SHARED / "synset_words.txt"
    if original.is_file():  # the shipped copy is the original, line for line
        shipped = [f"{w} {n}" for w, n in imagenet.imagenet_synset_words().items()]
        assert shipped == original.read_text().splitlines()


def test_display_names():
    assert imagenet.class_display_names(("n01443537", "disc"), 2) == ["goldfish (n01443537)", "disc"]
    assert imagenet.class_display_names(None, 1000)[0] == "tench (n01440764)"
    assert imagenet.class_display_names(None, 3) == ["class 0", "class 1", "class 2"]
    with pytest.raises(imagenet.ClassNamesError, match="2 class names for a model with 3"):
        imagenet.class_display_names(("a", "b"), 3)


# --------------------------------------------------------------------------- predictions


def test_predict_files_uses_the_run_preprocessing_and_flags_unreadable(colour_run):
    checkpoint = runs.open_run(colour_run / "run")
    folder = colour_run / "data" / "val"
    files = [folder / "green" / "0.png", folder / "red" / "broken.png", folder / "blue" / "1.png"]
    got = evaluation.predict_files(checkpoint, files, k=3)
    assert [g["path"] for g in got] == [str(f) for f in files]
    assert got[1] == {"path": str(files[1]), "error": "cannot be decoded as an image"}
    for item, colour in ((got[0], COLOURS["green"][0]), (got[2], COLOURS["blue"][1])):
        expected = colour_probs(colour)
        order = np.argsort(-expected)
        assert [(i, n) for i, n, _ in item["top"]] == [(int(i), CLASS_NAMES[i]) for i in order]
        np.testing.assert_allclose([p for *_, p in item["top"]], expected[order], atol=1e-5)
    text = evaluation.format_predictions(got)
    assert "  1.  " in text and "green" in text and "error: cannot be decoded" in text


def test_predict_prints_imagenet_names_for_an_imagenet_run(tmp_path, capsys):
    if not SAMPLE.is_dir():
        pytest.skip(f"real photos not found at {SAMPLE}")
    model = keras_alexnet.AlexNet(input_shape=(CROP, CROP, 3), classes=1000, fc_units=16, seed=0,
                                  positive_bias=0.0, weight_stddev=0.05)
    run = write_run(tmp_path / "run", {"best.keras": model}, {"crop_size": CROP, "resize_size": RESIZE,
                    "mean": "none"}, imagenet.imagenet_class_names(), class_index="imagenet")
    photos = sorted(SAMPLE.iterdir())[:2]
    code, out, _ = run_cli(["--checkpoint", str(run), "--predict", *map(str, photos)], capsys)
    assert code == 0
    lines = [line for line in out.splitlines() if re.match(r"\s+\d\.\s", line)]
    assert len(lines) == 10
    short = imagenet.imagenet_class_names_human(short=True)
    wnids = imagenet.imagenet_class_names()
    probabilities = []
    for line in lines:
        match = re.match(r"\s+\d\.\s+([\d.]+)%\s+(.+) \((n\d{8})\)$", line)
        assert match, line
        assert short[wnids.index(match.group(3))] == match.group(2)  # a real ImageNet name
        probabilities.append(float(match.group(1)))
    for five in (probabilities[:5], probabilities[5:]):
        assert five == sorted(five, reverse=True)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_train_then_evaluate_and_predict(tmp_path, capsys):
    # The synthetic dataset is drawn once per machine (~7 s) and reused, as train.py does.
    cache = Path(os.environ.get("KERAS_ALEXNET_CACHE", Path.home() / ".cache" / "keras_alexnet"))
    run = tmp_path / "run"
    # train.py in this process (its own process is tested elsewhere); float32 training:
    # evaluation always computes in float32 (runs.serving_model), so only then are its
    # errors exactly those training validated with.
    import train_cli

    code, _, err = train_cli.main(["--output-dir", run, "--epochs", "1", "--max-steps-per-epoch", "3",
                                   "--precision", "float32", "--quiet"])
    assert code == 0, err[-3000:]
    data_dir = cache / "synthetic"
    summary = json.loads((run / "summary.json").read_text())
    listed = sum(1 for _ in (data_dir / "val").rglob("*.JPEG"))

    photos = [str(sorted(d.iterdir())[0]) for d in sorted(SAMPLE.iterdir())[:2]] if SAMPLE.is_dir() else []
    results = {}
    for crops in ("center", "ten"):
        out_file = tmp_path / f"{crops}.json"
        # evaluate.py's main in this process (the script as a process: test_bad_paths_exit_2_before_loading_anything)
        argv = ["--top5", "--checkpoint", str(run), "--data-dir", str(data_dir), "--results-file", str(out_file),
                "--quiet"]
        if crops == "ten":
            argv += ["--ten-crop", *(["--predict", *photos] if photos else [])]
        capsys.readouterr()
        assert cli.main(argv) == 0
        printed = capsys.readouterr().out
        r = json.loads(out_file.read_text())
        results[crops] = r
        assert r["images"] == listed and r["skipped"] == 0 and r["num_classes"] == 8
        assert r["crops"] == crops and r["crops_per_image"] == {"center": 1, "ten": 10}[crops]
        assert r["checkpoint"] == str(run / "best.keras")
        tiny = recipes.preset("tiny")  # the built-in default's preprocessing
        assert r["preprocessing"]["crop_size"] == tiny.crop_size
        assert r["preprocessing"]["resize_size"] == tiny.resize_size
        assert r["preprocessing"]["stats"] == str(run / "stats.npz")
        for k in (1, 5):
            assert 0.0 <= r[f"top{k}_error"] <= 1.0
            assert r[f"top{k}_error"] == pytest.approx(1 - r[f"top{k}_correct"] / r["images"])
        assert r["top5_error"] <= r["top1_error"]
        if crops == "ten" and photos:
            # The synthetic run names its classes after the shapes it draws.
            ranked = [line for line in printed.splitlines() if re.match(r"\s+\d\.\s", line)]
            assert len(ranked) == 10
            names = {"disc", "square", "triangle", "ring", "cross", "stripes", "star", "checker"}
            assert all(line.split()[-1] in names for line in ranked)
            assert [p["path"] for p in r["predictions"]] == photos
    # The centre crop is what training validated on: the same errors as its last epoch.
    assert results["center"]["top1_error"] == pytest.approx(summary["final"]["val_top1_error"], abs=1e-6)
    assert results["center"]["top5_error"] == pytest.approx(summary["final"]["val_top5_error"], abs=1e-6)
