"""The notebooks in notebooks/: each runs top to bottom on a tiny run and writes real
figures, they are committed without outputs and copy no code, and one trains the built-in
default itself when given no run. Also the helpers of `keras_alexnet.notebook_utils`."""

import itertools
import json
import os
import re
from pathlib import Path

import matplotlib.image
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from keras_alexnet import analysis, notebook_utils, preprocessing as pre_lib, run_files, runs, synthetic

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
# The PNGs each notebook must write (visualize.FIGURES names, as the command writes them).
EXPECTED = {
    "01_first_layer_filters.ipynb": ["conv1_filters.png", "colour_specificity.png"],
    "02_activations.ipynb": ["activations.png"],
    "03_predictions_and_neighbours.ipynb": ["predictions.png", "neighbours.png", "neighbours_pixels.png"],
    "04_training_curves.ipynb": ["training_curves.png"],
}
# A line each notebook prints: the computed reading its markdown points to.
READINGS = {
    "01_first_layer_filters.ipynb": r"tower a mean specificity \d\.\d{3} vs tower b \d\.\d{3}; random init gives 0\.667",
    "02_activations.ipynb": r"conv5_b +\d+x\d+x128 +\d",
    "03_predictions_and_neighbours.ipynb": r"neighbours of the query's class: fc7 [\d.]+%, pixels [\d.]+%, chance 12\.5%",
    "04_training_curves.ipynb": r"2 epochs; best validation top-1 error",
}


def notebook_paths():
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def execute_in_one_kernel(jobs):
    """Runs notebooks one after another in one fresh kernel; ``jobs`` is a list of
    (notebook path, its environment variables). Each starts from an empty namespace
    (``%reset -f``) with exactly its own `notebook_utils` and cache variables set (the
    package reads them when called); returns each executed, in order. A notebook that
    leaned on another's variables fails here as it would alone; what the kernel keeps is
    its imported modules (TensorFlow's import, paid once instead of once per notebook; a
    kernel's start and exit cost about 5 s of CPU)."""
    env = kernel_env()
    notebooks = [nbformat.read(path, as_version=4) for path, _ in jobs]
    combined = nbformat.v4.new_notebook()
    spans = []
    for nb, (_, variables) in zip(notebooks, jobs):
        # The kernel's own value (or none) of each variable the job does not set.
        wanted = {k: env[k] for k in NOTEBOOK_VARIABLES if k in env} | {k: str(v) for k, v in variables.items()}
        combined.cells.append(nbformat.v4.new_code_cell(
            f"%reset -f\nimport os\n[os.environ.pop(name, None) for name in "
            f"{sorted(set(NOTEBOOK_VARIABLES) - set(wanted))!r}]\nos.environ.update({wanted!r})\ndel os"))
        spans.append((len(combined.cells), len(combined.cells) + len(nb.cells)))
        combined.cells.extend(nb.cells)
    client = NotebookClient(combined, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=env)
    for nb, (start, stop) in zip(notebooks, spans):
        nb.cells = combined.cells[start:stop]
    return notebooks


def stdout_of(nb):
    return "".join(
        out.get("text", "") for cell in code_cells(nb) for out in cell.outputs
        if out.output_type == "stream" and out.name == "stdout"
    )


def assert_figure(path):
    """A PNG that is not blank."""
    assert path.is_file(), f"missing {path}"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] >= 200 and pixels.shape[1] >= 200, pixels.shape
    assert float(pixels[..., :3].std()) > 0.05, f"{path} is (nearly) blank"


# What a notebook reads from the environment that an execution may set for itself.
NOTEBOOK_VARIABLES = (notebook_utils.RUN_ENV, notebook_utils.OUT_ENV, synthetic.CACHE_ENV)


def kernel_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop(notebook_utils.RUN_ENV, None)
    env.pop(notebook_utils.OUT_ENV, None)
    return env


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run as train.py writes it: the built-in default, 2 epochs of 5 steps."""
    import train_cli

    run = tmp_path_factory.mktemp("notebooks") / "run"
    code, out, err = train_cli.main(["--output-dir", run, "--epochs", "2", "--max-steps-per-epoch", "5", "--quiet"])
    assert code == 0, out[-2000:] + err[-3000:]
    return run


# ---------------------------------------------------------------------------------------
# The committed notebooks


def test_every_notebook_is_listed():
    assert [p.name for p in notebook_paths()] == sorted(EXPECTED)


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    """No outputs or execution counts (readable diffs), a papermill parameters cell
    first, and no code of its own: functions come from keras_alexnet."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    cells = code_cells(nb)
    for cell in cells:
        assert cell.outputs == [], f"{path.name}: a cell has outputs; strip them"
        assert cell.execution_count is None, f"{path.name}: a cell has an execution count"
    first = cells[0]
    assert "parameters" in first.metadata.get("tags", []), f"{path.name}: first code cell not tagged 'parameters'"
    assert re.search(r"^RUN_DIR = None\b", first.source, re.M)
    assert re.search(r"^OUT_DIR = None\b", first.source, re.M)
    for cell in cells:
        assert not re.search(r"^\s*(def|class)\s|lambda", cell.source, re.M), (
            f"{path.name}: define functions in keras_alexnet, not in the notebook:\n{cell.source}"
        )
    source = "\n".join(cell.source for cell in cells)
    assert re.search(r"^from keras_alexnet import .*\bnotebook_utils, runs\b", source, re.M)
    saved = set(re.findall(r'out_dir / "([\w.]+\.png)"', source))
    assert set(EXPECTED[path.name]) <= saved


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
    """A model directory as keras_alexnet.convert writes it (Caffe's BGR input and channel
    mean, the 1000 ImageNet classes), of a tiny random AlexNet."""
    from alexnet_dirs import CAFFE_STYLE, write_converted_dir

    return write_converted_dir(tmp_path_factory.mktemp("converted") / "caffenet", CAFFE_STYLE)


# 02 (activations) takes no path of its own for a converted model: its figure of a converted
# directory is tests/test_convert.py::test_a_converted_directory_evaluates_and_draws_every_figure.
ON_CONVERTED = sorted(set(EXPECTED) - {"02_activations.ipynb"})


@pytest.fixture(scope="module")
def executed(tiny_run, converted_dir, tmp_path_factory, request):
    """Every notebook on the tiny run, the notebooks that take a converted model directory
    on one, and, when `test_notebook_without_a_run_trains_the_default` is selected (it is
    slow), 04 with no run at all: it trains the built-in default into a fresh cache, where
    the synthetic dataset, drawn once per machine as train.py does, is linked in. All in one
    kernel: {(case, name): (executed notebook, its figures folder)}, and the cache."""
    root = tmp_path_factory.mktemp("executed")
    cache = root / "cache"
    cases = [("tiny_run", name, {notebook_utils.RUN_ENV: tiny_run}) for name in sorted(EXPECTED)]
    cases += [("converted", name, {notebook_utils.RUN_ENV: converted_dir}) for name in ON_CONVERTED]
    if any(item.originalname == "test_notebook_without_a_run_trains_the_default" for item in request.session.items):
        cache.mkdir()
        (cache / "synthetic").symlink_to(synthetic.default_dataset())
        cases += [("default", "04_training_curves.ipynb", {synthetic.CACHE_ENV: cache})]
    jobs, outs = [], []
    for case, name, variables in cases:
        outs.append(root / case / name.removesuffix(".ipynb"))
        jobs.append((NOTEBOOKS / name, {**variables, notebook_utils.OUT_ENV: outs[-1]}))
    notebooks = execute_in_one_kernel(jobs)
    executed = {(case, name): (nb, out) for (case, name, _), nb, out in zip(cases, notebooks, outs)}
    executed["cache"] = cache
    return executed


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_on_a_tiny_run(name, tiny_run, executed):
    nb, out = executed["tiny_run", name]
    for figure in EXPECTED[name]:
        assert_figure(out / figure)
    printed = stdout_of(nb)
    assert f"run: {tiny_run}" in printed
    assert re.search(READINGS[name], printed), printed
    # Figures show in the notebook too, not only as files.
    assert any("image/png" in o.get("data", {}) for c in code_cells(nb) for o in c.outputs)


@pytest.mark.parametrize("name", ON_CONVERTED)
def test_notebook_runs_on_a_converted_model_directory(name, converted_dir, executed):
    nb, out = executed["converted", name]
    printed = stdout_of(nb)
    assert f"run: {converted_dir}" in printed and "converted from" in printed
    if name == "04_training_curves.ipynb":  # a converted model has no training curves
        assert "no metrics.csv" in printed
        return
    for figure in EXPECTED[name]:
        assert_figure(out / figure)
    assert "mean: channel" in printed  # the model's own preprocessing, from its config.json


@pytest.mark.slow
def test_notebook_without_a_run_trains_the_default(executed):
    nb, out = executed["default", "04_training_curves.ipynb"]
    assert "training the built-in default" in stdout_of(nb)
    run = executed["cache"] / notebook_utils.DEFAULT_RUN
    assert (run / "best.keras").is_file()
    assert len(run_files.read_metrics(run)["epoch"]) == notebook_utils.BRIEF_EPOCHS
    assert_figure(out / "training_curves.png")


# ---------------------------------------------------------------------------------------
# notebook_utils


def test_get_run_and_figures_dir_precedence(tiny_run, tmp_path, monkeypatch):
    monkeypatch.delenv(notebook_utils.RUN_ENV, raising=False)
    monkeypatch.delenv(notebook_utils.OUT_ENV, raising=False)
    assert notebook_utils.get_run(tiny_run) == tiny_run
    monkeypatch.setenv(notebook_utils.RUN_ENV, str(tiny_run))
    assert notebook_utils.get_run(None) == tiny_run
    with pytest.raises(run_files.RunNotFoundError, match=str(tmp_path / "nothing")):
        notebook_utils.get_run(tmp_path / "nothing")  # the argument wins over the variable

    assert notebook_utils.figures_dir(tiny_run) == tiny_run / "figures"
    monkeypatch.setenv(notebook_utils.OUT_ENV, str(tmp_path / "env_out"))
    assert notebook_utils.figures_dir(tiny_run) == tmp_path / "env_out"
    assert notebook_utils.figures_dir(tiny_run, tmp_path / "arg_out") == tmp_path / "arg_out"
    assert (tmp_path / "arg_out").is_dir()


def test_get_run_reuses_a_finished_default(tiny_run, tmp_path, monkeypatch, capsys):
    # A finished run in the default place is used as it is, nothing trained.
    monkeypatch.delenv(notebook_utils.RUN_ENV, raising=False)
    monkeypatch.setenv(synthetic.CACHE_ENV, str(tmp_path))
    (tmp_path / notebook_utils.DEFAULT_RUN).symlink_to(tiny_run)
    assert notebook_utils.get_run(None) == tmp_path / notebook_utils.DEFAULT_RUN
    assert "using the briefly trained default" in capsys.readouterr().out


def test_the_notebooks_run_view_has_the_runs_preprocessing(tiny_run):
    run = runs.open_run(tiny_run)
    pre = run.preprocessing
    config = json.loads((tiny_run / "config.json").read_text())
    assert (pre.crop_size, pre.resize_size) == (config["recipe"]["crop_size"], config["recipe"]["resize_size"])
    assert list(run.class_names) == config["class_names"] == sorted(synthetic.CLASSES)
    with np.load(tiny_run / "stats.npz") as stats:
        mean = stats["mean_image"]
    top = (pre.resize_size - pre.crop_size) // 2
    x = np.full((1, pre.crop_size, pre.crop_size, 3), 100.0, np.float32)
    np.testing.assert_allclose(pre.network_input(x)[0], 100.0 - mean[top : top + pre.crop_size, top : top + pre.crop_size])
    val = run.files("val")
    manifest = json.loads((run.data_dir() / "manifest.json").read_text())
    assert len(val) == manifest["num_classes"] * manifest["val_per_class"]
    assert run.label(val[0]) == 0 and run.label(val[-1]) == 7
    assert run.label(Path("elsewhere/n01440764/x.JPEG")) == -1
    assert pre.load(val[:2]).shape == (2, pre.crop_size, pre.crop_size, 3)
    shown = notebook_utils.image_files(run, "val", 8)
    assert sorted({run.label(p) for p in shown}) == list(range(8))  # one per class
    text = run.describe()
    assert "2 epochs trained" in text and "chance: top-1 error 87.5%" in text


def test_relative_data_dir_is_found_from_any_working_directory(tmp_path, monkeypatch):
    """A run trained with a relative --data-dir: the notebook (run from notebooks/ or
    anywhere else) finds the data relative to where train.py ran."""
    where_trained = tmp_path / "checkout"
    (where_trained / "data" / "val" / "n01440764").mkdir(parents=True)
    (where_trained / "data" / "val" / "n01440764" / "a.JPEG").write_bytes(b"x")

    def data_dir(config):
        return runs.Run(path=tmp_path, model_path=tmp_path / "best.keras", config=config, kind="trained",
                        preprocessing=pre_lib.Preprocessing(99, 112), class_names=None, class_index="auto",
                        num_classes=None).data_dir()

    config = {"data": {"data_dir": "data", "tfds": None}, "working_dir": str(where_trained)}
    monkeypatch.chdir(tmp_path)  # "data" does not exist here
    assert data_dir(config) == where_trained / "data"
    assert data_dir({"data": {"data_dir": "/abs/data"}}) == Path("/abs/data")
    assert data_dir({"data": {"tfds": "imagenette"}}) is None
    # A config without working_dir: data_dir relative to the current directory.
    assert data_dir({"data": {"data_dir": "data"}}) == Path("data")


def test_one_image_falls_back_to_a_drawn_image(tiny_run, monkeypatch):
    run = runs.open_run(tiny_run)
    run.config = {}  # the run's data is not here
    monkeypatch.setattr(notebook_utils, "real_photos", lambda: [])
    image, where = notebook_utils.one_image(run)
    assert "synthetic" in where
    crop = run.preprocessing.crop_size
    assert image.shape == (crop, crop, 3) and 0 <= image.min() and image.max() <= 255


def test_spread():
    assert analysis.spread(range(3), 5) == [0, 1, 2]
    assert analysis.spread(range(10), 4) == [0, 3, 6, 9]


def exact_p_value(values):
    """Two-sided p of tower b - tower a over every split into halves (brute force)."""
    values = np.asarray(values, float)
    half = len(values) // 2
    observed = abs(values[half:].mean() - values[:half].mean())
    diffs = []
    for a in itertools.combinations(range(len(values)), half):
        mask = np.zeros(len(values), bool)
        mask[list(a)] = True
        diffs.append(abs(values[~mask].mean() - values[mask].mean()))
    return np.mean(np.asarray(diffs) >= observed - 1e-12)


def test_tower_difference():
    values = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9, 0.5, 0.6]
    result = notebook_utils.tower_difference(values, permutations=20_000)
    assert result["mean_a"] == pytest.approx(0.325) and result["mean_b"] == pytest.approx(0.7)
    assert result["difference"] == pytest.approx(0.375)
    assert result["p_value"] == pytest.approx(exact_p_value(values), abs=0.01)
    # Swapping the towers flips the sign, not the p-value; equal towers are no evidence.
    swapped = notebook_utils.tower_difference(values[4:] + values[:4], permutations=20_000)
    assert swapped["difference"] == pytest.approx(-0.375)
    assert swapped["p_value"] == pytest.approx(result["p_value"], abs=0.01)
    assert notebook_utils.tower_difference([0.5] * 6)["p_value"] == 1.0
    with pytest.raises(ValueError, match="even"):
        notebook_utils.tower_difference([0.1, 0.2, 0.3])
