"""Recipes: presets name their network variant, whose constants fill the recipe's model
fields unless a preset or a flag sets them; config.json records the numbers used."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_alexnet
from keras_alexnet import recipes

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def caffe_lrn_reference(a, n=5, k=1.0, alpha=1e-4, beta=0.75):
    """Caffe's cross-channel LRN (lrn_layer.cpp) over the last axis of ``a``:
    b_i = a_i / (k + alpha / n * sum_{j = i - n//2}^{i + n//2} a_j^2) ** beta, the window
    clipped to the channels there are."""
    a = np.asarray(a, np.float64)
    channels = a.shape[-1]
    sq = a**2
    out = np.empty_like(a)
    for i in range(channels):
        window = sq[..., max(0, i - n // 2):min(channels, i + n // 2 + 1)].sum(-1)
        out[..., i] = a[..., i] / (k + alpha / n * window) ** beta
    return out


@pytest.fixture(scope="module")
def caffe_lrn1():
    """conv1's ReLU output (both towers, 96 maps) and lrn1's of the caffe preset's model."""
    recipe = recipes.resolve("caffe", dict(crop_size=67, fc_units=16))
    model = keras_alexnet.AlexNet(classes=4, **recipe.model_kwargs())
    outputs = [model.get_layer(n).output for n in ("conv1_a", "conv1_b", "lrn1_a", "lrn1_b")]
    probe = keras.Model(model.input, outputs)
    x = np.random.default_rng(0).normal(0.0, 100.0, (2, 67, 67, 3)).astype(np.float32)
    conv_a, conv_b, lrn_a, lrn_b = probe.predict(x, verbose=0)
    return np.concatenate([conv_a, conv_b], -1), np.concatenate([lrn_a, lrn_b], -1)


def test_caffe_preset_normalises_across_both_towers(caffe_lrn1):
    relu, lrn = caffe_lrn1
    assert relu.shape[-1] == 96 and relu.min() >= 0
    expected = caffe_lrn_reference(relu)
    np.testing.assert_allclose(lrn, expected, rtol=1e-5, atol=1e-6)
    # Not the paper's per-tower LRN (with Caffe's constants): the maps next to the
    # towers' border (46-49) see the other tower's maps.
    within = np.concatenate([caffe_lrn_reference(relu[..., :48]), caffe_lrn_reference(relu[..., 48:])], -1)
    gap = np.abs(lrn - within) / np.maximum(np.abs(within), 1e-3)
    assert gap[..., 46:50].max() > 1e-3
    assert gap[..., :45].max() < 1e-5 and gap[..., 51:].max() < 1e-5
    # The normalisation is not negligible here.
    assert np.abs(expected - relu).max() > 0.01 * relu.max()


def test_presets_name_their_variant_and_record_its_numbers():
    caffe, original = recipes.preset("caffe"), recipes.preset("original")
    bvlc, paper = keras_alexnet.VARIANTS["bvlc_alexnet"], keras_alexnet.VARIANTS["paper"]
    assert caffe.variant == "bvlc_alexnet" and caffe.model_kwargs()["variant"] == "bvlc_alexnet"
    for field in recipes.VARIANT_FIELDS:
        assert getattr(caffe, field) == bvlc[field], field
        assert getattr(recipes.preset("paper"), field) == paper[field], field
    # Krizhevsky's 2012 code: the paper's network with its own alpha.
    assert original.variant == "paper" and original.lrn_alpha == 2e-5
    assert original.lrn_bias == paper["lrn_bias"]
    # config.json holds numbers, not None.
    saved = json.loads(recipes.to_json(caffe))
    assert saved["variant"] == "bvlc_alexnet"
    assert (saved["lrn_alpha"], saved["lrn_bias"], saved["positive_bias"]) == (2e-5, 1.0, 0.1)
    for name in recipes.PRESETS:
        recipe = recipes.preset(name)
        assert recipes.Recipe.from_dict(json.loads(recipes.to_json(recipe))) == recipe


def test_flags_override_the_variants_lrn_values():
    recipe = recipes.resolve("caffe", dict(lrn_alpha=3e-5, lrn_bias=2.0, lrn=None))
    assert (recipe.variant, recipe.lrn_alpha, recipe.lrn_bias, recipe.lrn) == ("bvlc_alexnet", 3e-5, 2.0, True)
    model = keras_alexnet.AlexNet(classes=4, **dict(recipe.model_kwargs(), input_shape=(67, 67, 3), fc_units=8))
    lrn1 = model.get_layer("lrn1")
    assert (lrn1.alpha, lrn1.bias, lrn1.groups) == (3e-5, 2.0, 1)
    # A variant given as an override brings its own values.
    recipe = recipes.resolve("paper", dict(variant="bvlc_alexnet"))
    assert (recipe.lrn_alpha, recipe.lrn_bias) == (2e-5, 1.0)
    with pytest.raises(ValueError, match="unknown recipe field"):
        recipes.resolve("paper", dict(lrn_gamma=1.0))


def test_old_config_without_variant_reads_as_the_paper():
    saved = json.loads((FIXTURES / "old_run" / "config.json").read_text())["recipe"]
    assert "variant" not in saved
    recipe = recipes.Recipe.from_dict(saved)
    assert recipe.variant == "paper" and recipe.model_kwargs()["variant"] == "paper"
    assert recipe.to_dict() == dict(json.loads(json.dumps(saved)), variant="paper", freeze_until=None) | {
        "lr_steps": tuple(saved["lr_steps"])}
