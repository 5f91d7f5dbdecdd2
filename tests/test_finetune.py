"""Fine-tuning (train.py --weights): a toy source trained on 4 synthetic classes, fine-tuned
on the other 4 with a new fc8, against a from-scratch run on the same 4 classes."""

import json
import shutil

import numpy as np
import pytest

import fault_worker
import train_cli
from keras_alexnet import finetune, pretrained, recipes, run_files, runs, synthetic, training

# Toy size (67 px crops, fc 64, one tower without LRN: the cheapest AlexNet to train here).
# The source: 4 synthetic classes, 256 images each, trained with Adam (1e-3 with a cosine
# decay, batch 32, 8 passes: 256 steps) through the package's own pipeline; it ends near 95%
# validation accuracy on its classes (Adam learns this toy source much faster than the tiny
# SGD recipe; any trained network can be a source, and a weak one would test little: at
# 2e-3 it reached 71-79% and fine-tuned to 31-40%). The classes alternate between source and
# target (disc, triangle, cross, stripes against square, ring, star, checker), so each target
# class has a relative among the source's (filled outline, pointed polygon, stroked lines,
# texture), as ImageNet's classes have among a new dataset's. With the filled shapes (disc,
# square, triangle, ring) as the targets of a source trained on the other four, fine-tuning
# reached only 46-51% against 73% from scratch.
SOURCE_CLASSES = ("disc", "triangle", "cross", "stripes")
TARGET_CLASSES = ("square", "ring", "star", "checker")
CLASSES_PER_SPLIT, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 256, 50
SOURCE_MODEL = dict(input_shape=(67, 67, 3), fc_units=64, grouping="none", lrn=False, dropout=0.0,
                    weight_stddev={"default": "he", "fc8": 0.01}, positive_bias=0.0, input_scale=1 / 64)
SOURCE_PASSES, SOURCE_BATCH, SOURCE_LR = 8, 32, 1e-3
# Both runs on the target classes: one epoch (64 steps of 16) at the same rate, seed 0,
# float32, no dropout or PCA noise (toy fc layers of 64). The from-scratch run is the tiny
# preset (its He initialisation and input scale: the paper's N(0, 0.01) stalls at toy size)
# with the same rate and flags, so only the initial weights differ. The rate is 1e-4, not
# the finetune preset's 0.001 (Caffe's, for the 4096-unit ImageNet network): on this source,
# whose fc7 outputs are large, 0.001 diverged in its first steps for 2 seeds of 4 (55% and
# 63% error; 21% and 24.5% for the others), and fc8 at 10x the rate (Caffe's lr_mult) was
# worse still. Measured at 1e-4, seeds 0-3: fine-tuned 29.0 / 20.0 / 21.0 / 20.5%, from
# scratch 80.5 / 69.5 / 69.5 / 76.5%; from scratch at the tiny preset's own 0.01,
# 62.5 / 64.5 / 68.0 / 75.0%.
RUN_FLAGS = ["--epochs", "1", "--batch-size", "16", "--quiet", "--precision", "float32", "--seed", "0",
             "--dropout", "0", "--pca-stddev", "0", "--lr", "0.0001"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The synthetic dataset's classes split in two: ``a``, the source's, and ``b``, the new ones."""
    root = tmp_path_factory.mktemp("finetune_data")
    all8 = synthetic.make_dataset(root / "all8", num_classes=8, train_per_class=TRAIN_PER_CLASS,
                                  val_per_class=VAL_PER_CLASS, size=76)
    for name, classes in (("a", SOURCE_CLASSES), ("b", TARGET_CLASSES)):
        for split in ("train", "val"):
            (root / name / split).mkdir(parents=True)
            for c in classes:
                shutil.move(all8 / split / c, root / name / split / c)
    return root


@pytest.fixture(scope="module")
def source(data, tmp_path_factory):
    """A model directory (as keras_alexnet.convert writes one) of a toy AlexNet trained on
    ``a`` through the package's own training pipeline (random crops and flips, channel mean)."""
    import keras

    from keras_alexnet import data as data_lib, hardware
    from keras_alexnet.model import AlexNet
    from keras_alexnet.preprocessing import Preprocessing
    from keras_alexnet.stats import compute_stats

    train = training.DataSpec(str(data / "a")).load().train
    mean = compute_stats(train, resize_size=76, progress=False).channel_mean
    pre = Preprocessing(67, 76, "channel", mean)
    ds = data_lib.training_dataset(train, SOURCE_BATCH, preprocessing=pre, pca_stddev=0.0, seed=0)
    keras.utils.set_random_seed(0)
    callers = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(hardware.choose_precision())  # bf16 where it is fast
    try:
        model = AlexNet(classes=CLASSES_PER_SPLIT, seed=0, **SOURCE_MODEL)
        steps = SOURCE_PASSES * CLASSES_PER_SPLIT * TRAIN_PER_CLASS // SOURCE_BATCH
        model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(SOURCE_LR, steps)),
                      loss="sparse_categorical_crossentropy")
        model.fit(ds.repeat(SOURCE_PASSES), verbose=0, shuffle=False)  # the pipeline shuffles
    finally:
        keras.mixed_precision.set_global_policy(callers)
    out = tmp_path_factory.mktemp("source") / "toy_source"
    preprocessing = {"crop_size": 67, "resize_size": 76, "mean": "channel", "mean_rgb": mean.tolist(),
                     "std_rgb": None, "channel_order": "RGB", "provenance": "the toy source's training set"}
    return run_files.write_model_dir(out, runs.serving_model(model), preprocessing=preprocessing,
                                     source={"format": "test", "variant": "paper"},
                                     class_names=sorted(SOURCE_CLASSES))


def first_epoch_error(run_dir):
    return float(run_files.read_metrics(run_dir / run_files.METRICS_FILE)["val_top1_error"][0])


def test_fine_tuning_beats_training_from_scratch_and_records_its_source(data, source, tmp_path, monkeypatch):
    ft, scratch = tmp_path / "ft", tmp_path / "scratch"
    code, _, err = train_cli.main(["--data-dir", data / "b", "--weights", source, "--output-dir", ft, *RUN_FLAGS])
    assert code == 0, err[-3000:]
    code, _, err = train_cli.main(["--data-dir", data / "b", "--output-dir", scratch, "--preset", "tiny",
                                   "--crop-size", "67", "--resize-size", "76", "--fc-units", "64",
                                   "--grouping", "none", "--no-lrn", *RUN_FLAGS])
    assert code == 0, err[-3000:]
    ft_error, scratch_error = first_epoch_error(ft), first_epoch_error(scratch)
    print(f"first-epoch validation top-1 error: fine-tuned {ft_error:.1%}, from scratch {scratch_error:.1%}")
    # Measured over seeds 0-3 (RUN_FLAGS): ratios 0.36, 0.29, 0.30, 0.27.
    assert ft_error <= 0.5 * scratch_error, (ft_error, scratch_error)

    config = json.loads((ft / "config.json").read_text())
    src = runs.open_run(source)
    assert config["weights"] == {"spec": str(source), "path": str(source),
                                 "sha256": pretrained.file_hash_of(src.model_path)}
    assert config["data"]["preset"] == "finetune" and config["recipe"]["learning_rate"] == 0.0001
    assert config["recipe"]["epochs"] == 1 and config["recipe"]["plateau_patience"] == 3  # the preset's
    assert config["settings"]["grouping"] == "none" and config["recipe"]["lrn"] is False  # the source's
    assert config["recipe"]["fc_units"] == 64 and config["num_classes"] == 4

    # evaluate.py's view of the run: the source's preprocessing, the new classes.
    run = runs.open_run(ft)
    a, b = run.preprocessing, src.preprocessing
    assert (a.crop_size, a.resize_size, a.mean_mode, a.channel_order) == (b.crop_size, b.resize_size,
                                                                          b.mean_mode, b.channel_order)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert a.std is None and b.std is None
    assert run.class_names == tuple(sorted(TARGET_CLASSES)) and run.model.output_shape[-1] == 4

    # The initial model, built as train() builds it: every conv layer exactly the source's.
    weights = finetune.open_source(str(source))
    recipe, settings = weights.adapt(run.recipe, training.RunSettings())
    initial = training.build_model(recipe, 4, settings.grouping, weights=weights)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        for got, want in zip(initial.get_layer(name).get_weights(), src.model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want, err_msg=name)

    # A run of train.py as the source (the from-scratch run, trained on b): fine-tuned on a,
    # it subtracts the source's mean image, not its own data's (whose statistics are only
    # for the PCA noise). Two short epochs, the second's checkpoint failing to save (a full
    # disk): the run stops with epoch 1 saved, and the same command resumes it from there.
    from_run = ["--data-dir", data / "a", "--weights", scratch, "--output-dir", tmp_path / "from_run",
                "--max-steps-per-epoch", "2", *RUN_FLAGS, "--epochs", "2"]
    with monkeypatch.context() as patch:
        fault_worker.inject("enospc-save:epoch-0002.keras", patch.setattr)
        code, _, err = train_cli.main(from_run)
    assert code == 4 and "No space left on device" in err, err[-3000:]
    first = run_files.read_metrics(tmp_path / "from_run" / run_files.METRICS_FILE)["val_top1_error"]
    assert len(first) == 1
    code, out, err = train_cli.main(from_run)
    assert code == 0, err[-3000:]
    assert f"Resuming {tmp_path / 'from_run'} after epoch 1" in out
    errors = run_files.read_metrics(tmp_path / "from_run" / run_files.METRICS_FILE)["val_top1_error"]
    assert len(errors) == 2 and errors[0] == first[0]
    src_run, ft_run = runs.open_run(scratch), runs.open_run(tmp_path / "from_run")
    assert src_run.preprocessing.mean_mode == ft_run.preprocessing.mean_mode == "image"
    np.testing.assert_array_equal(ft_run.preprocessing.mean, src_run.preprocessing.mean)
    own = run_files.load_stats(tmp_path / "from_run" / run_files.STATS_FILE).mean_image
    assert not np.allclose(own, src_run.preprocessing.mean, atol=1.0)

    # A resume with other weights, or none, is refused, naming the run.
    code, _, err = train_cli.main(["--data-dir", data / "b", "--weights", scratch, "--output-dir", ft, *RUN_FLAGS])
    assert code == 2 and str(ft) in err and "fine-tuned from" in err and str(scratch) in err
    code, _, err = train_cli.main(["--data-dir", data / "b", "--output-dir", ft, *RUN_FLAGS])
    assert code == 2 and str(ft) in err and "no --weights" in err
    # Weights that do not exist: the path in the message.
    code, _, err = train_cli.main(["--data-dir", data / "b", "--weights", tmp_path / "nowhere",
                                   "--output-dir", tmp_path / "x", *RUN_FLAGS])
    assert code == 2 and str(tmp_path / "nowhere") in err
    # Flags that would change the source's shape are refused.
    code, _, err = train_cli.main(["--data-dir", data / "b", "--weights", source, "--crop-size", "99",
                                   "--output-dir", tmp_path / "y", *RUN_FLAGS])
    assert code == 2 and "crop_size 99" in err


def test_a_converted_caffe_net_is_fed_bgr_minus_its_mean_and_freezing_keeps_the_convs(data, tmp_path):
    """A model directory as keras_alexnet.convert writes it (Caffe's BGR and channel mean,
    two towers), fine-tuned with --freeze-until conv5 for two steps."""
    from keras_alexnet.model import AlexNet

    net = AlexNet(variant="bvlc_alexnet", input_shape=(67, 67, 3), fc_units=16, classes=10, seed=1)
    pre = {"crop_size": 67, "resize_size": 76, "mean": "channel", "mean_rgb": [123.0, 117.0, 104.0],
           "channel_order": "BGR", "provenance": "a toy Caffe net"}
    source = run_files.write_model_dir(tmp_path / "converted", net, preprocessing=pre,
                                  source={"format": "caffe", "sha256": "ab" * 32, "variant": "bvlc_alexnet"},
                                  class_names=[f"c{i}" for i in range(10)])
    recipe = recipes.resolve("finetune", dict(batch_size=8, epochs=1, freeze_until="conv5"))
    settings = training.RunSettings(output_dir=str(tmp_path / "ft"), verbose=0, precision="float32",
                                    max_steps_per_epoch=2)
    training.train(recipe, training.DataSpec(str(data / "b")).load(), settings, weights=finetune.open_source(source))

    run = runs.open_run(tmp_path / "ft")
    assert run.config["weights"]["sha256"] == "ab" * 32
    assert run.config["settings"]["grouping"] == "towers" and run.recipe.variant == "bvlc_alexnet"
    assert run.preprocessing.channel_order == "BGR" and run.preprocessing.mean_mode == "channel"
    np.testing.assert_array_equal(run.preprocessing.mean, [123.0, 117.0, 104.0])
    trained = run.model
    for layer in net.layers:
        if layer.name.startswith("conv") and layer.get_weights():
            for got, want in zip(trained.get_layer(layer.name).get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(got, want, err_msg=layer.name)
    fc7 = [w for w in trained.get_layer("fc7").get_weights()]
    assert any(not np.array_equal(g, w) for g, w in zip(fc7, net.get_layer("fc7").get_weights()))


def test_the_training_pipeline_feeds_the_source_its_own_input(data):
    """The same seed through a BGR / std preprocessing gives the RGB views reversed and divided:
    the PCA noise (drawn in RGB, the space of the statistics) is added before the source's
    std and channel order, so it is the same noise in both."""
    from keras_alexnet import data as data_lib
    from keras_alexnet.preprocessing import Preprocessing
    from keras_alexnet.stats import compute_stats

    source = training.DataSpec(str(data / "b")).load().train
    stats = compute_stats(source, max_images=64, resize_size=76, progress=False)
    mean = np.array([123.0, 117.0, 104.0], np.float32)
    rgb = Preprocessing(67, 76, "channel", mean)
    bgr = Preprocessing(67, 76, "channel", mean, std=[2.0, 4.0, 8.0], channel_order="BGR")
    views = {}
    for name, p in (("rgb", rgb), ("bgr", bgr)):
        for pca in (0.0, 0.5):
            ds = data_lib.training_dataset(source, 4, preprocessing=p, stats=stats, pca_stddev=pca, seed=3)
            views[name, pca] = next(iter(ds))[0].numpy()
    assert not np.allclose(views["rgb", 0.5], views["rgb", 0.0], atol=1.0)  # the noise is there
    for pca in (0.0, 0.5):
        np.testing.assert_allclose(views["bgr", pca], (views["rgb", pca] / [2.0, 4.0, 8.0])[..., ::-1],
                                   rtol=1e-5, atol=1e-5)


def test_freeze_until_in_every_layout_and_only_with_weights(data, tmp_path):
    from keras_alexnet.model import AlexNet

    for grouping in ("towers", "grouped", "none"):
        model = AlexNet(input_shape=(67, 67, 3), classes=4, fc_units=8, grouping=grouping)
        finetune.freeze(model, "conv5")
        frozen = {l.name for l in model.layers if l.weights and not l.trainable}
        trainable = {l.name for l in model.layers if l.weights and l.trainable}
        assert {n.split("_")[0] for n in frozen} == {"conv1", "conv2", "conv3", "conv4", "conv5"}, grouping
        assert trainable == {"fc6", "fc7", "fc8"}, grouping
    code, _, err = train_cli.main(["--data-dir", data / "b", "--freeze-until", "conv5", "--output-dir",
                                   tmp_path / "x", *RUN_FLAGS])
    assert code == 2 and "--freeze-until needs --weights" in err

