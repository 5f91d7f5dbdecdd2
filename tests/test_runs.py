"""The run module: one reader of a run directory for every tool, its preprocessing
resolved once; the package's imports point one way."""

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import train_tiny_run
from keras_alexnet import data, run_files, runs, sources, stats as stats_lib, training_state

PACKAGE = Path(__file__).resolve().parents[1] / "keras_alexnet"
# The layers, bottom first: a module may import only modules of its own layer or below.
LAYERS = [
    {"console", "startup", "backends", "keras_compat", "imagenet", "recipes", "synthetic", "metrics", "images",
     "weight_readers", "variants", "hardware", "analysis"},
    {"layers", "preprocessing", "sources"},
    {"datasets"},  # the prepared directories' format, and which source a --data-dir names
    {"data", "weight_files"},
    {"stats"},
    {"run_files"},
    {"pretrained"},
    {"model"},  # converts published weights into a model directory (run_files)
    {"training_state", "runs"},
    {"evaluation", "applications", "callbacks", "activations", "finetune"},
    {"training", "figures"},  # figures reach training only as train.py's after_run hook
    {"notebook_utils", "__init__", "export", "convert", "prepare"},
]


def package_imports():
    """module -> the keras_alexnet modules it imports (anywhere in the file)."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "keras_alexnet":
                    found |= {a.name for a in node.names if (PACKAGE / f"{a.name}.py").is_file()}
                elif node.module.startswith("keras_alexnet."):
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("keras_alexnet.")}
        graph[path.stem] = found - {path.stem}
    return graph


def test_the_package_imports_have_no_cycle():
    graph = package_imports()
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                pytest.fail(f"import cycle: {' -> '.join(stack + [node, nxt])}")
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_imports_point_down_the_layers():
    graph = package_imports()
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    new = sorted(set(graph) - set(level))
    for module, imported in graph.items():
        for other in imported:
            if module in level and other in level:
                assert level[other] <= level[module], f"{module} imports {other}, a layer above it"
    # A new module gets a place in LAYERS (the only modules allowed outside: command-line
    # modules on top, which nothing in the package imports).
    for module in new:
        assert not any(module in imported for imported in graph.values()), (
            f"{module} is imported by the package but has no layer in LAYERS")


def test_every_command_owns_its_process():
    """Each command's ``__main__`` path freezes its imports (keras_alexnet/startup.py):
    ``startup.own_process()`` there, or ``main(own_process=True)`` for the two scripts,
    whose ``main`` imports the package later. ``main()`` called by a program freezes
    nothing (tests/train_cli.py checks train.py's)."""
    commands = [PACKAGE.parent / "train.py", PACKAGE.parent / "evaluate.py", *sorted(PACKAGE.glob("*.py"))]
    found = 0
    for path in commands:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                found += 1
                block = ast.unparse(node)
                assert "startup.own_process()" in block or "main(own_process=True)" in block, (
                    f"{path.name}: its __main__ block does not call startup.own_process()")
    assert found >= 9  # train.py, evaluate.py and the package's seven command modules


def test_imagenet_names_and_the_run_files_have_one_home():
    """The wnid pattern, synset words and run file names are spelled in one module each."""
    for path in PACKAGE.glob("*.py"):
        text = path.read_text()
        if path.stem != "imagenet":
            assert r'r"^n\d{8}$"' not in text, f"{path.name} spells the wnid pattern again"
            assert "imagenet_synset_words.txt" not in text, path.name
        if path.stem != "run_files":
            for name in ('"config.json"', '"checkpoint.json"', '"stats.npz"', '"summary.json"'):
                assert f"/ {name}" not in text, f"{path.name} spells {name}; use keras_alexnet.run_files"


@pytest.fixture(scope="module")
def runs_by_mean(tmp_path_factory, tiny_data):
    """A real tiny run (1 epoch of 2 steps, --mean image) and its copies whose config.json
    names the other mean modes: what reaches the network is decided by the run's config and
    statistics, not its weights (the pipelines of each mode: tests/test_data.py)."""
    import json
    import shutil

    root = tmp_path_factory.mktemp("means")
    runs_ = {"image": train_tiny_run(root / "image", tiny_data, mean="image", epochs=1)}
    for mode in ("channel", "none"):
        shutil.copytree(runs_["image"], root / mode)
        config = json.loads((root / mode / run_files.CONFIG_FILE).read_text())
        config["recipe"]["mean"] = mode
        (root / mode / run_files.CONFIG_FILE).write_text(json.dumps(config))
        runs_[mode] = root / mode
    return runs_


def photo(shared_data):
    files = sources.list_images(shared_data / "imagenet-sample" / "val")
    return files[0]


@pytest.mark.parametrize("mode", ["image", "channel", "none"])
def test_evaluation_and_figures_feed_the_network_the_same_tensor(mode, runs_by_mean, shared_data):
    run_dir = runs_by_mean[mode]
    run = runs.open_run(run_dir)
    pre = run.preprocessing
    assert pre.mean_mode == mode
    path = photo(shared_data)
    # The evaluation pipeline (evaluate.py, predict_files) ...
    source = sources.Source(location="one", split="one", class_names=("x",), num_classes=1,
                         class_index="compact", dataset=None, element="path", num_examples=1,
                         paths=np.array([str(path)], dtype=object), labels=np.array([0], np.int32))
    source.dataset = None
    (batch, _), = list(data.preprocessed_dataset(source, pre, batch_size=1).take(1))
    evaluated = batch.numpy()[0]
    # ... and the figure command and the notebooks (`Preprocessing.load` + `network_input`).
    figured = pre.network_input(pre.load([path]))[0]
    np.testing.assert_array_equal(evaluated, figured)
    # The independent reference: the recipe's mean mode applied to the stats.npz arrays.
    crop, resize = pre.crop_size, pre.resize_size
    top = (resize - crop) // 2
    raw = pre.load([path])[0]
    stats = stats_lib.load_stats(run_dir / "stats.npz")  # written even for mean none (PCA is on)
    mean = {"image": stats.mean_image[top:top + crop, top:top + crop], "channel": stats.channel_mean,
            "none": 0.0}[mode]
    np.testing.assert_allclose(figured, raw - mean, rtol=0, atol=1e-3)
    if mode == "none":
        np.testing.assert_array_equal(figured, raw)  # a mean it never saw is not subtracted


def test_open_run_reads_a_trained_run_once(tiny_run):
    run = runs.open_run(tiny_run)
    config = json.loads((tiny_run / "config.json").read_text())
    assert run.kind == "trained" and run.model_path == tiny_run / "best.keras"
    assert run.recipe.crop_size == config["recipe"]["crop_size"] == run.preprocessing.crop_size
    assert run.class_names == tuple(config["class_names"]) and run.num_classes == 4
    assert run.preprocessing.stats_path == tiny_run / "stats.npz"
    # A .keras file inside a run and the checkpoint file open the same run.
    assert runs.open_run(tiny_run / "last.keras").path == tiny_run
    state = training_state.read_training_state(tiny_run)
    assert state.epoch == 2 and len(state.history) == 2
    assert runs.open_run(state.model_path).path == tiny_run
    assert int(run.model.output_shape[-1]) == 4
    assert run.metrics()["epoch"].tolist() == [1.0, 2.0]
    assert run.summary()["epochs"] == 2


def test_a_resume_with_other_flags_raises_config_mismatch(tiny_run, tmp_path):
    config = run_files.read_config(tiny_run)
    run_files.check_config(tiny_run, config)  # the same: fine
    config["recipe"]["learning_rate"] = 0.5
    with pytest.raises(run_files.ConfigMismatchError, match=re.escape("recipe.learning_rate")):
        run_files.check_config(tiny_run, config)
    run_files.check_config(tmp_path, config)  # a new directory: nothing to compare


def test_a_converted_model_directory_opens_with_its_own_preprocessing(tiny_run, tmp_path):
    """BGR, a per-channel std and a mean image: what a Caffe or torchvision model takes."""
    model = runs.open_run(tiny_run).model
    mean_image = np.random.default_rng(0).uniform(0, 255, (112, 112, 3)).astype(np.float32)
    out = run_files.write_model_dir(
        tmp_path / "converted", model, mean_image=mean_image, class_names=["a", "b", "c", "d"],
        preprocessing={"crop_size": 99, "resize_size": 112, "mean": "image", "mean_rgb": None,
                       "std_rgb": [2.0, 4.0, 8.0], "channel_order": "BGR", "provenance": "test"},
        source={"format": "test"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "mean_image.npy", "model.keras"]
    run = runs.open_run(out)
    assert run.kind == "converted" and run.model_path == out / "model.keras" and run.recipe is None
    crops = np.random.default_rng(1).uniform(0, 255, (2, 99, 99, 3)).astype(np.float32)
    expected = ((crops - mean_image[6:105, 6:105]) / [2.0, 4.0, 8.0])[..., ::-1]
    np.testing.assert_allclose(run.preprocessing.network_input(crops), expected, rtol=1e-6)
    with pytest.raises(run_files.RunError, match="not empty"):
        run_files.write_model_dir(out, model, preprocessing={}, source={})


def test_damaged_config_names_the_file(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{ not json")
    (run / "best.keras").write_bytes(b"")
    with pytest.raises(run_files.RunError, match=re.escape(str(run / "config.json"))):
        runs.open_run(run)


def test_atomic_writers_leave_no_temporary_file_when_the_write_fails(tmp_path, monkeypatch):
    import os

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        run_files.atomic_write_text(tmp_path / "a.json", "{}")
    with pytest.raises(OSError):
        run_files.atomic_save_npy(np.zeros(3), tmp_path / "a.npy")
    assert list(tmp_path.iterdir()) == []
