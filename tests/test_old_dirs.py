"""Run and model directories written by earlier code still open, and compute what they
computed then (tests/fixtures/make_old_dirs.py made them, with its commit's code)."""

from pathlib import Path

import numpy as np
import pytest

from keras_alexnet import recipes, runs

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def old_outputs():
    with np.load(FIXTURES / "old_outputs.npz") as f:
        return dict(f)


@pytest.mark.parametrize("name, directory", [("run", "old_run"), ("converted", "old_converted")])
def test_old_directories_compute_what_they_did(old_outputs, name, directory):
    model = runs.open_run(FIXTURES / directory).model
    outputs = model.predict(old_outputs["inputs"], verbose=0)
    expected = old_outputs[name]
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_old_converted_dir_keeps_caffes_cross_tower_lrn():
    model = runs.open_run(FIXTURES / "old_converted").model
    assert model.variant == "bvlc_alexnet"
    assert model.get_layer("lrn1").groups == 1
    assert model.get_layer("lrn1_a").start == 0 and model.get_layer("lrn1_b").start == 4


def test_an_old_run_resumes_and_an_old_caffe_run_is_refused(tmp_path):
    """A config.json from before `Recipe.variant` reads as the paper variant: the same
    recipe resumes; the caffe preset (now Caffe's cross-tower LRN) is refused by name."""
    import json
    import shutil

    from keras_alexnet import run_files

    saved = json.loads((FIXTURES / "old_run" / "config.json").read_text())
    assert "variant" not in saved["recipe"]
    same = dict(saved, recipe=recipes.Recipe.from_dict(saved["recipe"]).to_dict())
    assert same["recipe"]["variant"] == "paper"
    run_files.check_config(FIXTURES / "old_run", same)  # no mismatch

    old_caffe = tmp_path / "old_caffe"
    old_caffe.mkdir()
    caffe = recipes.preset("caffe").to_dict()
    assert caffe["variant"] == "bvlc_alexnet"
    # What the caffe preset wrote before: Caffe's numbers on the paper's network.
    before = {k: v for k, v in caffe.items() if k != "variant"}
    shutil.copy(FIXTURES / "old_run" / "config.json", old_caffe / "config.json")
    (old_caffe / "config.json").write_text(json.dumps(dict(saved, recipe=before)))
    with pytest.raises(run_files.ConfigMismatchError, match="before presets named their network") as e:
        run_files.check_config(old_caffe, dict(saved, recipe=caffe))
    assert str(old_caffe) in str(e.value) and "--output-dir" in str(e.value)
