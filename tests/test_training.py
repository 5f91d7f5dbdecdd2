"""The training recipe: the paper's update rule, the plateau schedule, train.py's runs.
(Killed and resumed runs: tests/test_robust_runs.py.)"""

import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import train_cli
from keras_alexnet import callbacks, hardware, recipes, synthetic, training


def tiny_paper_model(weight_decay=0.0005, seed=0):
    recipe = recipes.resolve("paper", dict(dropout=0.0, fc_units=16, crop_size=67, weight_decay=weight_decay, seed=seed))
    model = training.build_model(recipe, num_classes=5)
    training.compile_model(model, recipe, training.RunSettings())
    return model, recipe


def test_sgd_steps_equal_numpy_transcription_of_paper_update_rule():
    # §5: v <- 0.9 v - wd lr w - lr dL/dw ;  w <- w + v   (weight decay on the kernels).
    # A large decay (0.5 instead of 0.0005) makes the decay term 25x the tolerance, so the
    # test tells the paper's rule from no decay and from Keras' doubled L2 gradient.
    wd = 0.5
    model, recipe = tiny_paper_model(weight_decay=wd)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 50, (6, 67, 67, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 0])
    lr, mu = recipe.learning_rate, recipe.momentum
    decayed = ["kernel" in w.path for w in model.trainable_weights]
    assert sum(decayed) == 5 * 2 + 3  # conv1..5 (two towers each) + fc6, fc7, fc8
    # References for decay factors 1 (the paper), 0 and 2, each from the same gradients.
    refs = {f: [w.numpy().astype(np.float64) for w in model.trainable_weights] for f in (1.0, 0.0, 2.0)}
    vels = {f: [np.zeros_like(w) for w in refs[f]] for f in refs}
    for step in range(3):
        # dL/dw of the data term, by an independent tape at the model's current weights.
        with tf.GradientTape() as tape:
            probs = model(x, training=False)
            data_loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))
        grads = [g.numpy().astype(np.float64) for g in tape.gradient(data_loss, model.trainable_weights)]
        current = [w.numpy().astype(np.float64) for w in model.trainable_weights]
        for f in refs:
            for i, (w, g) in enumerate(zip(current, grads)):
                vels[f][i] = mu * vels[f][i] - (f * wd * lr * w if decayed[i] else 0.0) - lr * g
                refs[f][i] = w + vels[f][i]
        model.train_on_batch(x, y)
        for i, w_model in enumerate(model.trainable_weights):
            got = w_model.numpy()
            tol = 1e-6 + 1e-4 * np.abs(got).max()
            np.testing.assert_allclose(got, refs[1.0][i], rtol=0, atol=tol, err_msg=f"{w_model.path}, step {step + 1}")
            if decayed[i]:
                for f in (0.0, 2.0):
                    assert np.abs(got - refs[f][i]).max() > 10 * tol, (w_model.path, f)


def test_keras_l2_factor_is_half_the_paper_decay():
    reg = training.paper_regularizer(0.0005)
    w = tf.Variable(np.ones((3,), np.float32) * 2.0)
    with tf.GradientTape() as tape:
        penalty = reg(w)
    np.testing.assert_allclose(tape.gradient(penalty, w).numpy(), 0.0005 * 2.0, rtol=1e-6)


# The plateau schedule ------------------------------------------------------------------


class _FakeModel:
    def __init__(self, lr):
        self.optimizer = keras.optimizers.SGD(learning_rate=lr)


def drive(callback, errors, start_epoch=0):
    rates = []
    for epoch, err in enumerate(errors, start=start_epoch):
        callback.on_epoch_end(epoch, {"val_top1_error": err})
        rates.append(float(callback.model.optimizer.learning_rate.numpy()))
    return rates


def test_plateau_divides_by_ten_after_patience_epochs_at_most_three_times():
    cb = callbacks.PlateauSchedule(patience=2, max_reductions=3, verbose=0)
    cb.set_model(_FakeModel(0.01))
    # Improves, then stalls: epochs 3 and 4 without improvement -> /10 after epoch 4.
    rates = drive(cb, [0.9, 0.8, 0.8, 0.85, 0.7, 0.75, 0.75, 0.8, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9])
    expected = [0.01, 0.01, 0.01, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    assert cb.reductions == 3  # and never a fourth time


def test_plateau_state_survives_a_resume():
    first = callbacks.PlateauSchedule(patience=3, verbose=0)
    first.set_model(_FakeModel(0.01))
    drive(first, [0.9, 0.8, 0.85, 0.85])  # two epochs without improvement so far
    state = json.loads(json.dumps(first.get_state()))  # as written to the checkpoint
    resumed = callbacks.PlateauSchedule(patience=3, verbose=0)
    resumed.set_model(_FakeModel(0.01))
    resumed.set_state(state)
    # One more epoch without improvement is the third: the rate drops at once.
    assert drive(resumed, [0.85], start_epoch=4) == pytest.approx([1e-3])
    fresh = callbacks.PlateauSchedule(patience=3, verbose=0)
    fresh.set_model(_FakeModel(0.01))
    assert drive(fresh, [0.85]) == pytest.approx([0.01])


def test_step_schedule_of_the_2012_code():
    cb = callbacks.StepSchedule(0.01, (25, 51, 79))
    assert [cb.rate(e) for e in (0, 24, 25, 50, 51, 78, 79, 90)] == pytest.approx(
        [0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])


def test_presets_are_data_with_sources():
    paper = recipes.preset("paper")
    assert (paper.batch_size, paper.learning_rate, paper.momentum, paper.weight_decay) == (128, 0.01, 0.9, 0.0005)
    assert (paper.lrn_bias, paper.lrn_alpha, paper.positive_bias, paper.weight_stddev) == (2.0, 1e-4, 1.0, 0.01)
    original = recipes.preset("original")
    assert original.lrn_alpha == 2e-5 and original.lr_steps == (25, 51, 79) and original.pca_off_epoch == 67
    assert original.weight_stddev["conv3"] == 0.03
    caffe = recipes.preset("caffe")
    assert (caffe.positive_bias, caffe.lrn_bias, caffe.pca_stddev, caffe.batch_size) == (0.1, 1.0, 0.0, 256)
    for name in recipes.PRESETS:
        assert all(isinstance(src, str) and src for src in recipes.preset_sources(name).values())
    # A flag overrides a preset field by field.
    assert recipes.resolve("caffe", {"batch_size": 64, "epochs": None}).batch_size == 64
    with pytest.raises(ValueError, match="unknown preset"):
        recipes.preset("vgg")


# Whole runs through train.py's main (in this process: see tests/train_cli.py) ----------

# float32 unless a test says otherwise: the cheapest precision to trace and run at this size.
TINY_FLAGS = ["--preset", "tiny", "--resize-size", "72", "--crop-size", "67", "--fc-units", "32",
              "--batch-size", "8", "--quiet", "--precision", "float32"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.make_dataset(root, num_classes=3, train_per_class=24, val_per_class=6, size=64)


def test_bad_flags_and_paths_exit_2_with_a_message(tmp_path):
    code, _, err = train_cli.main(["--data-dir", tmp_path / "nowhere"])
    assert code == 2 and "nowhere does not exist" in err
    code, _, err = train_cli.main(["--epochs", "0"])
    assert code == 2 and "--epochs" in err
    (tmp_path / "empty" / "train").mkdir(parents=True)
    code, _, err = train_cli.main(["--data-dir", tmp_path / "empty", "--output-dir", tmp_path / "run"])
    assert code == 2 and str(tmp_path / "empty") in err
    assert not (tmp_path / "run" / "checkpoint.json").exists()


def test_resuming_with_another_configuration_is_refused(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    flags = ["--data-dir", str(tiny_data), "--output-dir", str(run_dir), "--epochs", "1", *TINY_FLAGS,
             "--max-steps-per-epoch", "2"]
    assert train_cli.main(flags)[0] == 0
    code, _, err = train_cli.main([*flags, "--lr", "0.5"])
    assert code == 2 and "learning_rate" in err and str(run_dir) in err


def test_precision_is_chosen_by_what_the_hardware_computes():
    choose = hardware.choose_precision
    assert choose({"avx512f", "avx512_vnni"}, []) == "float32"  # bf16 would be emulated
    assert choose({"avx512f", "avx512_bf16"}, []) == "mixed_bfloat16"
    assert choose({"amx_bf16", "amx_tile"}, []) == "mixed_bfloat16"
    assert choose(set(), [(8, 0), (9, 0)]) == "mixed_bfloat16"
    assert choose(set(), [(7, 0)]) == "mixed_float16"
    assert choose({"amx_bf16"}, [(6, 1)]) == "float32"  # the GPUs do the work
    # This machine, read independently: no GPU here, so its CPU flags decide.
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    has_bf16 = bool(re.search(r"^flags\s*:.*\b(avx512_bf16|amx_bf16)\b", cpuinfo, re.M))
    assert choose() == ("mixed_bfloat16" if has_bf16 else "float32")


def test_xla_is_chosen_only_where_it_measured_faster():
    xla = hardware.choose_xla
    emulated, native = {"avx512f", "avx512_vnni"}, {"avx512f", "amx_bf16"}
    assert xla("mixed_bfloat16", "towers", emulated, 0) is True  # 27 vs 12 img/s (bench/NOTES.md)
    assert xla("float32", "towers", emulated, 0) is False  # fp32: oneDNN beats XLA
    assert xla("mixed_bfloat16", "grouped", emulated, 0) is False  # XLA's grouped conv gradient
    assert xla("mixed_bfloat16", "towers", native, 0) is False
    assert xla("mixed_bfloat16", "towers", emulated, 2) is False  # GPUs: not measured here


def test_bf16_run_takes_the_fast_path_chosen_for_this_machine(tmp_path, tiny_data):
    """--precision mixed_bfloat16 trains end to end (bf16 convs, float32 matmul LRN) and
    records whether XLA was chosen, as `choose_xla` decides for this machine."""
    run_dir = tmp_path / "bf16"
    code, out, err = train_cli.main(["--data-dir", str(tiny_data), "--output-dir", str(run_dir), "--epochs", "1",
                                     *TINY_FLAGS, "--max-steps-per-epoch", "2", "--precision", "mixed_bfloat16"])
    assert code == 0, err[-2000:]
    expected = hardware.choose_xla("mixed_bfloat16", "towers")
    settings = json.loads((run_dir / "config.json").read_text())["settings"]
    assert settings["xla"] is expected and settings["precision"] == "mixed_bfloat16"
    assert ("XLA: on" in out) is expected
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 1 and np.isfinite(summary["final"]["val_loss"])


@pytest.mark.slow
def test_loss_falls_on_real_photos(tmp_path, shared_data):
    """train.py's main on 4 Imagenette classes of real JPEGs (symlinked, never copied into the
    repo), through the whole pipeline: the training loss and error fall, epoch by epoch.
    Dropout and PCA noise are off so that the fall measures learning, not noise."""
    source = shared_data / "imagenette" / "train"
    if not source.is_dir():
        pytest.skip(f"{source} not found")
    root = tmp_path / "photos"
    wnids = sorted(p.name for p in source.iterdir() if p.is_dir())[:4]
    for split, take in (("train", slice(0, 24)), ("val", slice(24, 30))):
        for wnid in wnids:
            (root / split / wnid).mkdir(parents=True)
            for path in sorted((source / wnid).iterdir())[take]:
                (root / split / wnid / path.name).symlink_to(path)
    run_dir = tmp_path / "run"
    code, _, err = train_cli.main(["--data-dir", str(root), "--class-index", "compact", "--output-dir",
                                   str(run_dir), *TINY_FLAGS, "--epochs", "10", "--dropout", "0", "--pca-stddev", "0"])
    assert code == 0, err[-3000:]
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().strip().splitlines()]
    metrics = {name: np.array([float(r[i]) for r in rows[1:]]) for i, name in enumerate(rows[0])}
    loss, error = metrics["loss"], metrics["top1_error"]
    assert len(loss) == 10
    assert loss[-3:].mean() < loss[0] - 0.2, loss  # the loss includes the weight decay term
    assert np.sum(np.diff(loss) < 0) >= 7, loss  # falling, epoch by epoch
    assert error[-3:].mean() < error[0] - 0.2, error



def test_the_mean_flags_list_the_mean_modes_and_the_library_checks_them(capsys):
    """train.py and evaluate.py check --mean through the library (so their --help stays free
    of TensorFlow); their help names every mode the library knows."""
    import re
    import sys

    import train_cli
    from keras_alexnet.preprocessing import MEAN_MODES

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import evaluate

    for parse in (train_cli.train_script.parse_args, evaluate.parse_args):
        with pytest.raises(SystemExit):
            parse(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        mean_help = text[text.rindex("--mean MODE"):][:160]  # the option list, not the usage line
        assert all(re.search(rf"\b{mode}\b", mean_help) for mode in MEAN_MODES), mean_help
    code, _, err = train_cli.main(["--mean", "median", "--epochs", "1"])
    assert code == 2 and f"mean must be one of {MEAN_MODES}, got 'median'" in err
