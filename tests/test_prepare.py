"""``python -m keras_alexnet.prepare``: the squares made once, and every tool reading them."""

import json

import numpy as np
import pytest
from PIL import Image

from keras_alexnet import data, datasets, prepare, sources, stats
import train_cli

SIZE = 76  # the tiny preset's squares (67 crops): train.py runs on them as they are
SHAPES = [(90, 70), (70, 90), (64, 64), (120, 80), (80, 200), (66, 65)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 6 train + 2 val photos of varied shapes, one undecodable train file."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for c in "abc":
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(count):
                h, w = SHAPES[i]
                pixels = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
                image = Image.fromarray(pixels).resize((w, h), Image.BILINEAR)
                image.save(d / f"{c}{i}.png" if i % 2 else d / f"{c}{i}.JPEG", quality=98)
    (root / "train" / "a" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return root


@pytest.fixture(scope="module")
def prepared(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    prepare.prepare(folder, out, resize_size=SIZE, shards=4, val_shards=2, encoding="png",
                    workers=1, progress=False)
    return out


def test_manifest_counts_and_skips(prepared):
    manifest = datasets.read_manifest(prepared)
    assert (manifest["format"], manifest["version"]) == (datasets.PREPARED_FORMAT, 1)
    assert manifest["resize_size"] == SIZE and manifest["class_names"] == ["a", "b", "c"]
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert (train["count"], val["count"]) == (18, 6)
    assert [s["file"] for s in train["shards"]] == [f"train-0000{i}-of-00004.tfrecord" for i in range(4)]
    assert sum(s["records"] for s in train["shards"]) == 18
    assert [s["file"].endswith("broken.JPEG") for s in train["skipped"]] == [True]
    assert val["skipped"] == []


def test_resume_rewrites_only_the_missing_shard(folder, prepared):
    shards = sorted(prepared.glob("train-*.tfrecord"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in prepared.glob("*.tfrecord")}
    shards[1].unlink()
    shards[1].with_name(shards[1].name + ".done").unlink()
    prepare.prepare(folder, prepared, resize_size=SIZE, shards=4, val_shards=2, encoding="png",
                    workers=1, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in prepared.glob("*.tfrecord")}
    assert after.keys() == mtimes.keys()
    assert [n for n in after if after[n] != mtimes[n]] == [shards[1].name]


def test_another_dataset_in_out_is_refused(folder, prepared):
    with pytest.raises(sources.DatasetError, match=str(prepared / "manifest.json")):
        prepare.prepare(folder, prepared, resize_size=SIZE + 8, workers=1, progress=False)


def _arrays(ds):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


def test_crops_equal_the_on_the_fly_pipeline(folder, prepared, tmp_path):
    """PNG: equal up to the uint8 rounding of the square (0.5); JPEG q95 4:4:4 within 40."""
    kwargs = dict(crop_size=67, resize_size=SIZE)
    raw_val = sources.folder_source(folder, "val")
    x_raw, y_raw = _arrays(data.evaluation_dataset(raw_val, 4, crops="ten", **kwargs))
    x_png, y_png = _arrays(data.evaluation_dataset(datasets.load_source(prepared, "val"), 4, crops="ten", **kwargs))
    np.testing.assert_array_equal(y_raw, y_png)
    assert np.abs(x_raw - x_png).max() <= 0.5 + 1e-4

    jpeg = tmp_path / "jpeg"
    prepare.prepare(folder, jpeg, resize_size=SIZE, shards=1, val_shards=1, workers=1, progress=False)
    x_jpeg, _ = _arrays(data.evaluation_dataset(datasets.prepared_source(jpeg, "val"), 4, crops="ten", **kwargs))
    assert np.abs(x_raw - x_jpeg).max() <= 40 and np.abs(x_raw - x_jpeg).mean() <= 3

    # Training crops (same seeds, offsets and flips) of one image: one shard, one file.
    one = tmp_path / "one"
    (one / "train" / "a").mkdir(parents=True)
    (one / "val" / "a").mkdir(parents=True)
    for split in ("train", "val"):
        (one / split / "a" / "x.png").write_bytes((folder / "train" / "a" / "a3.png").read_bytes())
    prepare.prepare(one, tmp_path / "one_prepared", resize_size=SIZE, shards=1, val_shards=1,
                    encoding="png", workers=1, progress=False)
    def crops(source):
        ds = data.training_dataset(source, 1, pca_stddev=0, seed=3, **kwargs).repeat(4)
        return _arrays(ds)[0]
    x_raw = crops(sources.folder_source(one, "train"))
    x_png = crops(datasets.load_source(tmp_path / "one_prepared", "train"))
    assert np.abs(x_raw - x_png).max() <= 0.5 + 1e-4
    assert np.abs(x_raw[0] - x_raw[1:]).max() > 1  # the crops differ between epochs


def test_train_evaluate_stats_and_resize_refusal(folder, prepared, tmp_path):
    code, out, err = train_cli.main(["--data-dir", prepared, "--preset", "tiny", "--epochs", 1, "--max-steps-per-epoch", 2,
                                     "--batch-size", 4, "--output-dir", tmp_path / "run", "--quiet"])
    assert code == 0, err
    code, out, err = train_cli.main(["--data-dir", prepared, "--preset", "tiny", "--epochs", 1,
                                     "--resize-size", 84, "--crop-size", 75, "--output-dir", tmp_path / "run84", "--quiet"])
    assert code == 2 and "76x76 squares" in err + out

    # evaluate.py on the prepared directory: the same error as on the raw folder, centre and ten crops.
    import evaluate

    for crops in ([], ["--ten-crop"]):
        results = {}
        for name, where in (("raw", folder), ("prepared", prepared)):
            out_file = tmp_path / f"{name}{len(crops)}.json"
            assert evaluate.main(["--checkpoint", str(tmp_path / "run"), "--data-dir", str(where), "--top5",
                                  "--results-file", str(out_file), *crops]) == 0
            results[name] = json.loads(out_file.read_text())
        for key in ("top1_error", "top5_error", "images"):
            assert results["raw"][key] == results["prepared"][key], (key, crops, results)

    assert stats.main(["--data-dir", str(prepared), "--out", str(tmp_path / "s.npz"),
                       "--resize-size", str(SIZE), "--no-progress"]) is None
    result = stats.load_stats(tmp_path / "s.npz")
    assert result.num_images == 18 and result.resize_size == SIZE


def test_damaged_shards_and_manifests_are_named(prepared, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(prepared, bad)
    shard = bad / "train-00002-of-00004.tfrecord"
    blob = bytearray(shard.read_bytes())
    blob[2] ^= 0xFF  # same size, the first record's length damaged: found when read
    shard.write_bytes(bytes(blob))
    with pytest.raises(sources.DatasetError, match=str(shard)):
        stats.compute_stats(datasets.load_source(bad, "train"), resize_size=SIZE, progress=False)

    shard.write_bytes(bytes(blob[:-100]))  # truncated: found before reading
    with pytest.raises(sources.DatasetError, match=str(shard)):
        datasets.load_source(bad, "train")
    shard.unlink()
    with pytest.raises(sources.DatasetError, match=f"{shard}: listed in .* but missing"):
        datasets.load_source(bad, "train")

    manifest_path = bad / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["val"]["count"] += 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(sources.DatasetError, match=str(manifest_path)):
        datasets.load_source(bad, "val")
    manifest["version"] = 2
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(sources.DatasetError, match=f"{manifest_path}.*version 2"):
        datasets.load_source(bad, "val")
