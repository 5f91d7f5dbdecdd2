"""Tests of keras_alexnet.stats: streamed mean image and RGB PCA against NumPy."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_alexnet import sources, stats
from keras_alexnet.layers import IMAGENET_EIGENVALUES_01, IMAGENET_EIGENVECTORS

REPO = Path(__file__).resolve().parents[1]
IMAGENETTE_TRAIN = REPO.parent / "shared" / "data" / "imagenette" / "train"


def save(path, array, fmt="PNG", mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(array, np.uint8))
    if mode:
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


def exact_folder(root, size=16):
    """PNGs whose shorter side is already ``size``: the pipeline only crops them.

    Returns the central ``size x size`` squares, computed with NumPy.
    """
    rng = np.random.default_rng(0)
    squares = []
    for k in range(7):
        height, width = (size, size + 2 * (k % 3)) if k % 2 else (size + 2 * (k % 3), size)
        # Correlated channels, like photos: a shared brightness plus colour noise.
        base = rng.uniform(20, 220, (height, width, 1))
        image = np.clip(base + rng.normal(0, [30, 15, 8], (height, width, 3)), 0, 255)
        image = image.astype(np.uint8)
        save(root / f"class{k % 3}" / f"{k}.png", image)
        top, left = (height - size) // 2, (width - size) // 2
        squares.append(image[top : top + size, left : left + size].astype(np.float64))
    return np.stack(squares)


def test_compute_stats_matches_numpy(tmp_path):
    squares = exact_folder(tmp_path)
    result = stats.compute_stats(tmp_path, resize_size=16, split=None, batch_size=3,
                                 progress=False)
    pixels = squares.reshape(-1, 3)
    covariance = np.cov(pixels.T, bias=True)
    np.testing.assert_allclose(result.mean_image, squares.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(result.channel_mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(result.covariance, covariance, rtol=1e-9)
    values, vectors = np.linalg.eigh(covariance)
    np.testing.assert_allclose(result.eigenvalues, values[::-1], rtol=1e-9)
    # Columns are the eigenvectors (up to sign), unit length, C v = lambda v.
    np.testing.assert_allclose(np.abs(result.eigenvectors.T @ vectors[:, ::-1]), np.eye(3),
                               atol=1e-9)
    np.testing.assert_allclose(covariance @ result.eigenvectors,
                               result.eigenvectors * result.eigenvalues, atol=1e-6)
    assert result.eigenvectors[:, 0].sum() < 0 and (result.eigenvectors[0, 1:] >= 0).all()
    assert result.num_images == 7 and result.num_skipped == 0
    assert result.class_names == ("class0", "class1", "class2")
    np.testing.assert_allclose(result.eigenvalues_01, values[::-1] / 255**2, rtol=1e-9)
    np.testing.assert_allclose(result.pca_eigenvalues, values[::-1] / 255, rtol=1e-9)
    # The batch size does not change the result.
    other = stats.compute_stats(tmp_path, resize_size=16, split=None, batch_size=64,
                                progress=False)
    np.testing.assert_allclose(other.covariance, result.covariance, rtol=1e-12)
    np.testing.assert_allclose(other.mean_image, result.mean_image, rtol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    exact_folder(tmp_path / "images")
    result = stats.compute_stats(tmp_path / "images", resize_size=16, split=None,
                                 progress=False)
    result.save(tmp_path / "stats.npz")
    loaded = stats.load_stats(tmp_path / "stats.npz")
    for field in ("mean_image", "channel_mean", "covariance", "eigenvalues", "eigenvectors"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(result, field))
    for field in ("num_images", "num_undecodable", "num_non_image", "class_names",
                  "resize_size", "source"):
        assert getattr(loaded, field) == getattr(result, field)


def test_bad_files_are_skipped_and_counted(tmp_path):
    squares = exact_folder(tmp_path)
    save(tmp_path / "class0" / "cmyk.JPEG", np.full((16, 16, 3), 90), "JPEG", mode="CMYK")
    save(tmp_path / "class1" / "png_named.JPEG", np.full((16, 16, 3), 50), "PNG")
    save(tmp_path / "class2" / "gray.JPEG", np.full((16, 16, 3), 70), "JPEG", mode="L")
    good = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good, "JPEG")
    (tmp_path / "class0" / "truncated.JPEG").write_bytes(good.getvalue()[:200])
    (tmp_path / "class1" / "zero.JPEG").write_bytes(b"")
    (tmp_path / "class2" / "notes.txt").write_text("hello")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    result = stats.compute_stats(tmp_path, resize_size=16, split=None, progress=False)
    assert (result.num_images, result.num_undecodable, result.num_non_image) == (10, 2, 2)
    # The three odd-but-good images are in the mean (flat 90, 50 and 70, lossy JPEG).
    expected = (squares.sum(axis=0) + 90 + 50 + 70) / 10
    np.testing.assert_allclose(result.mean_image, expected, atol=0.5)


def test_max_images_takes_a_seeded_subset_across_classes(tmp_path):
    exact_folder(tmp_path)
    source = sources.folder_source(tmp_path, None)
    subset = stats._subset(source, 4, seed=0)
    assert subset.num_examples == 4 and len(set(subset.labels.tolist())) > 1
    assert set(subset.paths.tolist()) <= set(source.paths.tolist())
    assert stats._subset(source, 4, seed=0).paths.tolist() == subset.paths.tolist()
    result = stats.compute_stats(source, 4, resize_size=16, progress=False)
    assert result.num_images == 4


@pytest.mark.skipif(not IMAGENETTE_TRAIN.is_dir(), reason=f"{IMAGENETTE_TRAIN} not found")
def test_command_on_imagenette_agrees_with_published_imagenet_pca(tmp_path):
    out = tmp_path / "imagenette_stats.npz"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run(
        [sys.executable, "-m", "keras_alexnet.stats", "--data-dir", str(IMAGENETTE_TRAIN),
         "--max-images", "500", "--out", str(out), "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=True,
    )
    printed = json.loads(completed.stdout)
    loaded = stats.load_stats(out)
    assert printed["num_images"] == loaded.num_images == 500
    assert loaded.mean_image.shape == (256, 256, 3) and len(loaded.class_names) == 1000
    np.testing.assert_allclose(printed["eigenvalues_255"], loaded.eigenvalues)
    np.testing.assert_allclose(printed["eigenvalues_01"], loaded.eigenvalues / 255**2)
    vectors = np.array(printed["eigenvectors_columns"])
    cosine = abs(vectors[:, 0] @ IMAGENET_EIGENVECTORS[:, 0]) / np.linalg.norm(
        IMAGENET_EIGENVECTORS[:, 0])
    assert cosine > 0.98
    ratios = np.array(printed["eigenvalues_01"]) / printed["eigenvalues_01"][0]
    published = IMAGENET_EIGENVALUES_01 / IMAGENET_EIGENVALUES_01[0]
    np.testing.assert_allclose(ratios[1:], published[1:], rtol=0.35)
    # The largest [0, 1]-scale eigenvalue is of the published size (0.2175), i.e. the
    # published values are eigenvalues of the covariance itself.
    assert 0.5 * 0.2175 < printed["eigenvalues_01"][0] < 2 * 0.2175
