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
