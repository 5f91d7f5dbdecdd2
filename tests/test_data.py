"""Tests of the data path (keras_alexnet.sources, .preprocessing, .data): sources, labels,
crops, shuffling, bad files.

References are independent of the code under test: label files are read here with plain
Python, crops are compared with NumPy slices of images whose pixels encode their own
coordinates, bad files are decoded with Pillow.
"""

import importlib.util
import io
import os
import tarfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_alexnet import data, datasets, imagenet, images as image_lib, preprocessing as pre_lib, sources

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMAGENETTE = SHARED / "imagenette"
SAMPLE = SHARED / "imagenet-sample" / "val"
needs_shared = pytest.mark.skipif(
    not (IMAGENETTE.is_dir() and SAMPLE.is_dir() and (SHARED / "synset_words.txt").is_file()),
    reason=f"real photos not found under {SHARED}",
)
TFDS_DIR = Path(importlib.util.find_spec("tensorflow_datasets").submodule_search_locations[0])
WNID_A, WNID_B = "n01440764", "n01443537"  # ImageNet classes 0 and 1


# --------------------------------------------------------------------------- references


def tfds_lines(name):
    """A label file of tensorflow-datasets, read independently of the code under test."""
    text = (TFDS_DIR / "datasets" / "imagenet2012" / name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def synset_order():
    """The 1000 wnids in class-index order, from synset_words.txt (or TFDS's file)."""
    path = SHARED / "synset_words.txt"
    if path.is_file():
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return tfds_lines("labels.txt")


def save(path, array, fmt=None, mode=None, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(array, np.uint8))
    if mode:
        image = image.convert(mode)
    image.save(path, format=fmt, **kwargs)
    return path


def flat_image(value, size=(12, 16)):
    return np.full((*size, 3), value, np.uint8)


def coordinate_image(size=256):
    """uint8 RGB image whose pixel (i, j) is (i, j, (i + 7 j) mod 256): crops are traceable."""
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.stack([i, j, (i + 7 * j) % 256], axis=-1).astype(np.uint8)


def read_labels(ds):
    return np.concatenate([labels.numpy() for _, labels in ds])


# --------------------------------------------------------------------------- class lists


def test_imagenet_class_names_are_the_standard_order():
    assert list(imagenet.imagenet_class_names()) == synset_order()
    assert len(imagenet.imagenet_validation_wnids()) == 50_000
    assert list(imagenet.imagenet_validation_wnids()[:5]) == tfds_lines("validation_labels.txt")[:5]


# --------------------------------------------------------------------------- real photos


@needs_shared
def test_imagenette_train_folder_uses_imagenet_indices():
    source = sources.folder_source(IMAGENETTE / "train")  # DATA_DIR = a folder of classes
    order = synset_order()
    expected = sorted(
        (str(Path(root) / name), order.index(Path(root).name))
        for root, _, names in os.walk(IMAGENETTE / "train")
        for name in names
        if name.upper().endswith(".JPEG")
    )
    assert source.class_index == "imagenet" and source.num_classes == 1000
    assert list(source.class_names) == order
    assert sorted(zip(source.paths.tolist(), source.labels.tolist())) == expected
    # The tf.data view agrees with the arrays.
    first = next(iter(source.dataset.batch(5)))
    assert [p.decode() for p in first[0].numpy()] == source.paths[:5].tolist()
    assert first[1].numpy().tolist() == source.labels[:5].tolist()


@needs_shared
def test_split_names_are_forgiving_and_compact_indices_follow_folders():
    val = sources.folder_source(IMAGENETTE, "val")
    validation = sources.folder_source(IMAGENETTE, "validation")
    assert val.location == validation.location == str(IMAGENETTE / "val")
    assert val.paths.tolist() == validation.paths.tolist()
    compact = sources.folder_source(IMAGENETTE, "train", class_index="compact")
    folders = sorted(os.listdir(IMAGENETTE / "train"))
    assert compact.num_classes == 10 and list(compact.class_names) == folders
    parents = [Path(p).parent.name for p in compact.paths]
    assert [folders[k] for k in compact.labels] == parents


@needs_shared
def test_imagenet_sample_all_sizes_load_to_256_with_right_labels():
    source = sources.folder_source(SAMPLE, None)
    order = synset_order()
    assert source.num_examples == 100 and source.num_classes == 1000
    assert [order[k] for k in source.labels] == [Path(p).parent.name for p in source.paths]
    counter = data.SkipCounter()
    ds = data.evaluation_dataset(source, 25, counter=counter)
    labels = []
    for images, batch_labels in ds:
        assert images.shape[1:] == (227, 227, 3)
        assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
        labels.extend(batch_labels.numpy().tolist())
    assert labels == source.labels.tolist()
    assert counter.skipped == 0 and counter.images == 100


@needs_shared
def test_folder_named_like_another_split_is_refused():
    with pytest.raises(sources.DatasetNotFoundError, match=str(IMAGENETTE / "train")):
        sources.folder_source(IMAGENETTE / "train", "val")


# --------------------------------------------------------------------------- flat val layout


def test_flat_validation_folder_is_labelled_from_validation_labels(tmp_path):
    numbers = [1, 3, 7, 12, 4242, 50_000]
    val = tmp_path / "val"
    for k in numbers:
        save(val / f"ILSVRC2012_val_{k:08d}.JPEG", flat_image(k % 256))
    (val / "README.txt").write_text("not an image")
    wnids = tfds_lines("validation_labels.txt")
    order = synset_order()
    source = sources.folder_source(tmp_path, "validation")
    got = {Path(p).name: int(label) for p, label in zip(source.paths, source.labels)}
    assert got == {f"ILSVRC2012_val_{k:08d}.JPEG": order.index(wnids[k - 1]) for k in numbers}
    assert source.num_classes == 1000
    assert source.non_image_files == (str(val / "README.txt"),)
    # Compact indices over the wnids present, in sorted order.
    compact = sources.folder_source(tmp_path, "val", class_index="compact")
    present = sorted({wnids[k - 1] for k in numbers})
    assert list(compact.class_names) == present
    got = {Path(p).name: compact.class_names[k] for p, k in zip(compact.paths, compact.labels)}
    assert got == {f"ILSVRC2012_val_{k:08d}.JPEG": wnids[k - 1] for k in numbers}


def test_flat_validation_folder_rejects_unlabellable_files(tmp_path):
    save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", flat_image(1))
    save(tmp_path / "val" / "holiday.jpg", flat_image(2))
    with pytest.raises(sources.DatasetError, match="holiday.jpg"):
        sources.folder_source(tmp_path, "val")
    (tmp_path / "val" / "holiday.jpg").unlink()
    save(tmp_path / "val" / "ILSVRC2012_val_00050001.JPEG", flat_image(2))
    with pytest.raises(sources.DatasetError, match="ILSVRC2012_val_00050001"):
        sources.folder_source(tmp_path, "val")
    (tmp_path / "val" / "ILSVRC2012_val_00050001.JPEG").unlink()
    # A wnid of the labels that is not in the given class list.
    with pytest.raises(sources.DatasetError, match=str(tmp_path / "val")):
        sources.folder_source(tmp_path, "val", class_names=[WNID_A])


# --------------------------------------------------------------------------- clear errors


def make_classes(root, names, per_class=2):
    for c, name in enumerate(names):
        for k in range(per_class):
            save(root / name / f"{name}_{k}.JPEG", flat_image(40 * c + k))


@pytest.mark.parametrize(
    "layout, culprit",
    [
        ("missing_dir", "nowhere"),
        ("missing_split", "data"),
        ("empty_class", WNID_B),
        ("unknown_wnid", "n99999999"),
        ("mixed_names", "data"),
        ("no_images", "train"),
        ("loose_images", "train"),
    ],
)
def test_structural_problems_are_clear_errors(tmp_path, layout, culprit):
    root = tmp_path / "data"
    train = root / "train"
    if layout == "missing_dir":
        root = tmp_path / "nowhere"
    elif layout == "missing_split":
        make_classes(root / "train", [WNID_A])
    elif layout == "empty_class":
        make_classes(train, [WNID_A])
        (train / WNID_B).mkdir()
    elif layout == "unknown_wnid":
        make_classes(train, [WNID_A, "n99999999"])
    elif layout == "mixed_names":
        make_classes(train, [WNID_A, "cats"])
    elif layout == "no_images":
        train.mkdir(parents=True)
        (train / ".DS_Store").write_bytes(b"\0\0")
    elif layout == "loose_images":
        make_classes(train, [WNID_A])
        save(train / "stray.JPEG", flat_image(3))
    split = "val" if layout == "missing_split" else "train"
    expected = sources.DatasetNotFoundError if layout.startswith("missing") else sources.DatasetError
    with pytest.raises(expected) as info:
        sources.folder_source(root, split)
    assert culprit in str(info.value)
    assert isinstance(info.value, ValueError)
    if layout.startswith("missing"):
        assert isinstance(info.value, FileNotFoundError)


def test_class_names_fix_compact_indices_across_splits(tmp_path):
    make_classes(tmp_path / "train", ["cat", "dog", "emu"])
    make_classes(tmp_path / "val", ["dog", "emu"])  # a class missing in val
    train = sources.folder_source(tmp_path, "train")
    assert train.class_index == "compact" and train.class_names == ("cat", "dog", "emu")
    val = sources.folder_source(tmp_path, "val", class_names=train.class_names)
    assert val.num_classes == 3
    assert [val.class_names[k] for k in val.labels] == [Path(p).parent.name for p in val.paths]
    assert set(val.labels.tolist()) == {1, 2}
    with pytest.raises(sources.DatasetError, match="emu"):
        sources.folder_source(tmp_path, "val", class_names=["cat", "dog"])


def test_compact_wnid_model_keeps_its_indices_on_validation(tmp_path):
    make_classes(tmp_path / "train", [WNID_B, WNID_A, "n01484850"])
    make_classes(tmp_path / "val", ["n01484850", WNID_A])
    train = sources.folder_source(tmp_path, "train", class_index="compact")
    assert train.class_names == (WNID_A, WNID_B, "n01484850") and train.num_classes == 3
    val = sources.folder_source(tmp_path, "val", class_names=train.class_names)
    assert val.class_index == "compact" and val.class_names == train.class_names
    assert [val.class_names[k] for k in val.labels] == [Path(p).parent.name for p in val.paths]
    assert sorted(set(val.labels.tolist())) == [0, 2]
    # The full standard list in order is the ImageNet index.
    full = sources.folder_source(tmp_path, "val", class_names=synset_order())
    assert full.class_index == "imagenet" and sorted(set(full.labels.tolist())) == [0, 2]


# --------------------------------------------------------------------------- crops


def test_resize_shorter_side_and_central_crop_shapes():
    image = tf.zeros([300, 1000, 3], tf.uint8)
    resized = image_lib.resize_shorter_side(image, 256)
    assert resized.dtype == tf.float32 and resized.shape == (256, round(1000 * 256 / 300), 3)
    tall = image_lib.resize_shorter_side(tf.zeros([57, 40, 3]), 256)
    assert tall.shape == (round(57 * 256 / 40), 256, 3)
    assert image_lib.central_crop(resized, 256).shape == (256, 256, 3)


def test_resize_and_central_crop_match_numpy_on_exact_cases():
    # A 256 x 300 image keeps its scale (shorter side is already 256): the central
    # square is the NumPy slice [:, 22:278] exactly.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 300, 3)).astype(np.uint8)
    square = image_lib.central_crop(image_lib.resize_shorter_side(image, 256), 256)
    np.testing.assert_array_equal(square.numpy(), image[:, 22:278].astype(np.float32))


def pillow_square(image, size):
    """Independent reference: Pillow's float bilinear resize (antialiased when shrinking)
    of each channel to shorter side ``size``, then the NumPy central slice."""
    height, width = image.shape[:2]
    new_h, new_w = (round(x * size / min(height, width)) for x in (height, width))
    channels = [
        np.asarray(Image.fromarray(image[..., c].astype(np.float32), "F").resize(
            (new_w, new_h), Image.BILINEAR))
        for c in range(3)
    ]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.stack(channels, axis=-1)[top : top + size, left : left + size]


@pytest.mark.parametrize("shape", [(300, 401), (517, 260), (1000, 700), (40, 57), (50, 30),
                                   (64, 90), (64, 64)])
def test_resize_central_square_matches_pillow(shape):
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3)).astype(np.uint8)
    expected = pillow_square(image, 64)
    square = image_lib.resize_central_square(image, 64).numpy()
    full = image_lib.central_crop(image_lib.resize_shorter_side(image, 64), 64).numpy()
    np.testing.assert_allclose(square, expected, atol=2e-3)
    np.testing.assert_allclose(full, expected, atol=2e-3)
    in_data = next(iter(tf.data.Dataset.from_tensors(image).map(
        lambda x: image_lib.resize_central_square(x, 64))))
    np.testing.assert_array_equal(in_data.numpy(), square)


def crop_window(crop):
    """(top, left, flipped) of a crop of coordinate_image, read from its pixels."""
    flipped = crop[0, 0, 1] > crop[0, -1, 1]
    left = int(crop[0, -1, 1] if flipped else crop[0, 0, 1])
    return int(crop[0, 0, 0]), left, bool(flipped)


def expected_crop(image, top, left, size, flipped):
    window = image[top : top + size, left : left + size]
    return window[:, ::-1] if flipped else window


def test_random_crops_are_windows_of_the_image_and_flip_half_the_time():
    image = coordinate_image().astype(np.float32)
    tensor = tf.constant(image)
    n = 600
    seeds = tf.data.Dataset.random(seed=5).batch(2).take(n)
    views = seeds.map(lambda s: pre_lib.random_crop_and_flip(tensor, s, 227)).batch(200)
    windows = []
    for batch in views:
        for crop in batch.numpy():
            top, left, flipped = crop_window(crop)
            assert 0 <= top <= 29 and 0 <= left <= 29
            assert np.array_equal(crop, expected_crop(image, top, left, 227, flipped))
            windows.append((top, left, flipped))
    tops, lefts, flips = map(np.array, zip(*windows))
    # Every one of the 30 offsets occurs (missing one has probability < 1e-7).
    assert set(tops.tolist()) == set(range(30)) == set(lefts.tolist())
    # Flips: binomial(600, 1/2), mean 0.5, sd 0.0204; 5 sd bound.
    assert abs(flips.mean() - 0.5) < 0.102
    # Eager call gives the same as inside tf.data.
    seed = tf.constant([3, 4], tf.int64)
    eager = pre_lib.random_crop_and_flip(tensor, seed, 227).numpy()
    in_data = next(iter(tf.data.Dataset.from_tensors(seed).map(
        lambda s: pre_lib.random_crop_and_flip(tensor, s, 227))))
    np.testing.assert_array_equal(eager, in_data.numpy())


def test_ten_crops_are_corners_centre_and_mirrors():
    image = coordinate_image().astype(np.float32)
    mean = np.random.default_rng(1).uniform(0, 255, image.shape).astype(np.float32)
    crops = pre_lib.ten_crops(tf.constant(image), 227, tf.constant(mean)).numpy()
    shifted = image - mean  # mean subtracted at the same window = before cropping
    windows = [shifted[:227, :227], shifted[:227, 29:], shifted[29:, :227], shifted[29:, 29:],
               shifted[14:241, 14:241]]
    expected = np.stack(windows + [w[:, ::-1] for w in windows])
    assert crops.shape == (10, 227, 227, 3)
    np.testing.assert_allclose(crops, expected, atol=1e-4)
    centre = pre_lib.center_crop(tf.constant(image), 227).numpy()
    np.testing.assert_array_equal(centre, image[14:241, 14:241])


def coordinate_folder(root, count=3):
    """Class folders of lossless 256x256 coordinate PNGs (pixel values survive exactly)."""
    image = coordinate_image()
    for k in range(count):
        save(root / ("a" if k % 2 == 0 else "b") / f"img{k}.png", image)
    return image


def test_training_pipeline_crops_subtract_the_mean_at_the_same_window(tmp_path):
    image = coordinate_folder(tmp_path).astype(np.float32)
    source = sources.folder_source(tmp_path, None)
    mean = np.random.default_rng(2).uniform(0, 255, (256, 256, 3)).astype(np.float32)

    class Stats:  # only the fields the pipeline reads
        mean_image = mean
        channel_mean = mean.mean(axis=(0, 1))
        pca_eigenvalues = eigenvectors = None

    kwargs = dict(batch_size=3, seed=11, pca_stddev=0)
    plain = next(iter(data.training_dataset(source, **kwargs)))
    centred = next(iter(data.training_dataset(source, stats=Stats, mean="image", **kwargs)))
    channel = next(iter(data.training_dataset(source, stats=Stats, mean="channel", **kwargs)))
    for crop, crop_c, crop_ch in zip(plain[0].numpy(), centred[0].numpy(), channel[0].numpy()):
        top, left, flipped = crop_window(crop)
        np.testing.assert_array_equal(crop, expected_crop(image, top, left, 227, flipped))
        want = expected_crop(image - mean, top, left, 227, flipped)
        np.testing.assert_allclose(crop_c, want, atol=1e-4)
        np.testing.assert_allclose(crop_ch, crop - Stats.channel_mean, atol=1e-4)


def test_mean_image_of_another_size_is_resized_and_errors_are_clear(tmp_path):
    save(tmp_path / "a" / "flat.png", np.full((16, 16, 3), 100, np.uint8))
    source = sources.folder_source(tmp_path, None)

    class Stats:  # a mean image computed at 32 x 32, used at 16 x 16
        mean_image = np.full((32, 32, 3), 30.0, np.float32)

    images, _ = next(iter(data.evaluation_dataset(source, 1, stats=Stats, crop_size=12,
                                                  resize_size=16)))
    np.testing.assert_allclose(images.numpy(), 70.0, atol=1e-4)
    with pytest.raises(ValueError, match="needs stats"):
        data.training_dataset(source, mean="image")
    with pytest.raises(ValueError, match="crop_size"):
        data.training_dataset(source, crop_size=17, resize_size=16)
    assert datasets.load_source(tmp_path, None).paths.tolist() == source.paths.tolist()


def test_evaluation_pipeline_ten_crops_from_files(tmp_path):
    image = coordinate_folder(tmp_path, count=2).astype(np.float32)
    source = sources.folder_source(tmp_path, None)
    images, labels = next(iter(data.evaluation_dataset(source, 2, crops="ten")))
    assert images.shape == (2, 10, 227, 227, 3) and labels.numpy().tolist() == [0, 1]
    expected = pre_lib.ten_crops(tf.constant(image), 227).numpy()
    np.testing.assert_array_equal(images.numpy()[1], expected)
    # Reduced sizes for the tiny configuration.
    small, _ = next(iter(data.evaluation_dataset(source, 2, crop_size=57, resize_size=64)))
    assert small.shape == (2, 57, 57, 3)


# --------------------------------------------------------------------------- shuffling


def tiny_folder(root, classes=3, per_class=6):
    rng = np.random.default_rng(0)
    for c in range(classes):
        for k in range(per_class):
            save(root / f"class{c}" / f"{k}.png", rng.integers(0, 256, (20, 24, 3)))


def epochs(ds, count=2):
    return [[(x.numpy(), y.numpy()) for x, y in ds] for _ in range(count)]


def test_same_seed_same_batches_different_seed_different(tmp_path):
    tiny_folder(tmp_path)
    source = sources.folder_source(tmp_path, None)
    kwargs = dict(batch_size=4, crop_size=14, resize_size=16, drop_remainder=True)  # PCA on
    first = epochs(data.training_dataset(source, seed=7, **kwargs))
    again = epochs(data.training_dataset(source, seed=7, **kwargs))
    other = epochs(data.training_dataset(source, seed=8, **kwargs))
    assert len(first[0]) == 18 // 4  # drop_remainder
    for epoch, epoch_again in zip(first, again):
        for (x, y), (x2, y2) in zip(epoch, epoch_again):
            np.testing.assert_array_equal(x, x2)
            np.testing.assert_array_equal(y, y2)

    def labels(run):
        return [np.concatenate([y for _, y in epoch]).tolist() for epoch in run]

    assert labels(first) != labels(other)
    assert labels(first)[0] != labels(first)[1]  # reshuffled every epoch
    assert not np.array_equal(first[0][0][0], other[0][0][0])


def test_shards_are_disjoint_and_cover_the_source(tmp_path):
    tiny_folder(tmp_path, per_class=5)
    source = sources.folder_source(tmp_path, None)
    shards = [
        read_labels(data.evaluation_dataset(source, 4, crop_size=8, resize_size=8,
                                            num_shards=3, shard_index=i))
        for i in range(3)
    ]
    assert sorted(np.concatenate(shards).tolist()) == sorted(source.labels.tolist())
    assert [len(s) for s in shards] == [5, 5, 5]
    ds = data.training_dataset(source, 2, seed=0, crop_size=8, resize_size=8, num_shards=3,
                               shard_index=1)
    assert sorted(read_labels(ds).tolist()) == sorted(shards[1].tolist())
    assert ds.options().experimental_distribute.auto_shard_policy == (
        tf.data.experimental.AutoShardPolicy.OFF)


def test_works_under_tf_distribute(tmp_path):
    tiny_folder(tmp_path, per_class=4)
    source = sources.folder_source(tmp_path, None)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    counter = data.SkipCounter()
    ds = data.training_dataset(source, 4, seed=0, crop_size=8, resize_size=8, counter=counter)
    labels = [strategy.experimental_local_results(y)[0].numpy()
              for _, y in strategy.experimental_distribute_dataset(ds)]
    assert sorted(np.concatenate(labels).tolist()) == sorted(source.labels.tolist())
    assert (counter.images, counter.skipped) == (12, 0)

    def per_replica(context):
        return data.training_dataset(
            source, 4, seed=0, crop_size=8, resize_size=8,
            num_shards=context.num_input_pipelines, shard_index=context.input_pipeline_id)

    batches = list(strategy.distribute_datasets_from_function(per_replica))
    assert sum(len(strategy.experimental_local_results(y)[0]) for _, y in batches) == 12


# --------------------------------------------------------------------------- bad files


def bad_folder(root):
    """Two classes with one file of every troublesome kind; returns the good images."""
    good = {}  # path -> label (compact, sorted folder order: "a" = 0, "b" = 1)
    a, b = root / "a", root / "b"
    good[save(a / "plain.JPEG", flat_image((200, 30, 30)), quality=95)] = 0
    good[save(a / "cmyk.JPEG", flat_image((30, 200, 30)), "JPEG", mode="CMYK", quality=95)] = 0
    good[save(a / "png_inside.JPEG", flat_image((30, 30, 200)), "PNG")] = 0
    good[save(b / "gray.JPEG", flat_image(90), mode="L", quality=95)] = 1
    good[save(b / "Upper.JPG", flat_image((220, 220, 40)), "JPEG")] = 1
    good[save(b / "pic.bmp", flat_image((40, 220, 220)), "BMP")] = 1
    full = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3)).astype(np.uint8)).save(
        full, "JPEG")
    (a / "truncated.JPEG").write_bytes(full.getvalue()[: len(full.getvalue()) // 3])
    (b / "empty.JPEG").write_bytes(b"")
    (a / "notes.txt").write_text("not an image")
    (b / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    assert Image.open(a / "cmyk.JPEG").mode == "CMYK"
    return good


def pil_colour(path):
    return np.asarray(Image.open(path).convert("RGB"), np.float64).mean(axis=(0, 1))


def test_bad_files_are_skipped_and_counted_good_ones_arrive(tmp_path):
    good = bad_folder(tmp_path)
    source = sources.folder_source(tmp_path, None)
    assert source.num_examples == 8  # 6 good + truncated + empty
    assert sorted(Path(p).name for p in source.non_image_files) == [".DS_Store", "notes.txt"]
    counter = data.SkipCounter()
    ds = data.evaluation_dataset(source, 3, crop_size=8, resize_size=8, counter=counter)
    arrived = [(x, int(y)) for xs, ys in ds for x, y in zip(xs.numpy(), ys.numpy())]
    assert counter.skipped == 2 and counter.images == 6
    # Each good file arrives once, with its label and (near) the colour Pillow decodes.
    expected = sorted((label, tuple(np.round(pil_colour(p)))) for p, label in good.items())
    got = sorted((y, tuple(np.round(x.mean(axis=(0, 1))))) for x, y in arrived)
    assert [g[0] for g in got] == [e[0] for e in expected]
    for (_, colour), (_, want) in zip(got, expected):
        np.testing.assert_allclose(colour, want, atol=3)
    # Again: counts accumulate per pass, exactly.
    assert len(read_labels(ds)) == 6 and counter.skipped == 4


def test_skip_report_logs_each_epoch_in_fit(tmp_path, capsys):
    bad_folder(tmp_path)
    source = sources.folder_source(tmp_path, None)
    counter = data.SkipCounter()
    ds = data.training_dataset(source, 4, seed=0, crop_size=6, resize_size=8, counter=counter)
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, epochs=3, verbose=0,
                        callbacks=[data.SkipReport(counter, len(source.non_image_files))])
    assert history.history["skipped_files"] == [2, 2, 2]
    out = capsys.readouterr().out
    assert "2 non-image file(s)" in out and "Epoch 3: 2 undecodable file(s) skipped" in out


def test_pca_noise_uses_pca_eigenvalues_of_stats(tmp_path):
    for k in range(20):
        save(tmp_path / "a" / f"grey{k}.png", np.full((16, 16, 3), 128, np.uint8))
    source = sources.folder_source(tmp_path, None)

    class Stats:  # Imagenette-like covariance eigenvalues on the [0, 255] scale
        eigenvalues = np.array([15000.0, 1100.0, 230.0])
        pca_eigenvalues = eigenvalues / 255.0
        eigenvectors = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
        mean_image = np.zeros((16, 16, 3), np.float32)

    ds = data.training_dataset(source, 20, stats=Stats, seed=0, crop_size=8, resize_size=16)
    offsets = np.concatenate([x.numpy()[:, 0, 0] - 128.0 for _ in range(4) for x, _ in ds])
    assert offsets.shape == (80, 3)
    # Each offset is the same on all pixels and ~ N(0, 0.1 * pca_eigenvalues) along the
    # eigenvectors: |offset| < 5 * 0.1 * 58.8 per channel; with `eigenvalues` it would
    # be 255 times larger.
    assert np.abs(offsets).max() < 30 and offsets.std() > 0.5
    projected = offsets @ Stats.eigenvectors  # coordinates along the eigenvectors
    np.testing.assert_allclose(projected.std(axis=0), 0.1 * Stats.pca_eigenvalues, rtol=0.5)


# --------------------------------------------------------------------------- TFDS


def add_to_tar(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def jpeg_bytes(value):
    buffer = io.BytesIO()
    Image.fromarray(flat_image(value)).save(buffer, "JPEG", quality=100)
    return buffer.getvalue()


VAL_NUMBERS = [3, 7, 12]  # not 1..K: TFDS alone would mislabel these


@pytest.fixture(scope="module")
def imagenet2012_tars(tmp_path_factory):
    """Tiny ILSVRC2012_img_{train,val}.tar; each image's grey level identifies it."""
    manual = tmp_path_factory.mktemp("manual")
    train_truth = {}
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as outer:
        for c, wnid in enumerate([WNID_A, WNID_B, "n01484850"]):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for k in range(2):
                    value = 30 + 60 * c + 20 * k
                    add_to_tar(tar, f"{wnid}_{k}.JPEG", jpeg_bytes(value))
                    train_truth[value] = wnid
            add_to_tar(outer, f"{wnid}.tar", inner.getvalue())
    val_truth = {}
    wnids = tfds_lines("validation_labels.txt")
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as tar:
        for k in VAL_NUMBERS:
            add_to_tar(tar, f"ILSVRC2012_val_{k:08d}.JPEG", jpeg_bytes(10 * k))
            val_truth[10 * k] = wnids[k - 1]
    return manual, tmp_path_factory.mktemp("tfds"), train_truth, val_truth


def identify(source, truth):
    """(true wnid, labelled wnid) per example, matching images by grey level."""
    pairs = []
    for encoded, label in source.dataset:
        level = float(np.mean(image_lib.decode_image(encoded).numpy()))
        value = min(truth, key=lambda v: abs(v - level))
        assert abs(value - level) < 3
        pairs.append((truth[value], source.class_names[int(label)]))
    return pairs


def test_tfds_imagenet2012_prepared_offline_from_manual_tars(imagenet2012_tars):
    manual, data_dir, train_truth, val_truth = imagenet2012_tars
    with pytest.raises(sources.DatasetNotFoundError, match="not prepared"):
        sources.tfds_source("imagenet2012", "train", data_dir=data_dir)
    train = sources.tfds_source("imagenet2012", "train", data_dir=data_dir, manual_dir=manual)
    assert train.num_classes == 1000 and list(train.class_names) == synset_order()
    pairs = identify(train, train_truth)
    assert len(pairs) == 6 and all(true == got for true, got in pairs)
    # Already prepared: found by name and data dir alone; "val" is accepted.
    val = sources.tfds_source("imagenet2012", "val", data_dir=data_dir)
    pairs = identify(val, val_truth)
    assert len(pairs) == 3 and all(true == got for true, got in pairs)
    part = sources.tfds_source("imagenet2012", "validation[:2]", data_dir=data_dir)
    pairs = identify(part, val_truth)
    assert part.num_examples == len(pairs) == 2 and all(true == got for true, got in pairs)
    # Compact indices in a given class order, and the pipeline on encoded bytes.
    reverse = synset_order()[::-1]
    compact = sources.tfds_source("imagenet2012", "train", data_dir=data_dir, class_index="compact",
                               class_names=reverse)
    assert compact.class_index == "compact" and compact.class_names == tuple(reverse)
    assert all(true == got for true, got in identify(compact, train_truth))
    with pytest.raises(sources.DatasetError, match="not in the given class_names"):
        sources.tfds_source("imagenet2012", "train", data_dir=data_dir, class_names=reverse[:10])
    counter = data.SkipCounter()
    ds = data.training_dataset(compact, 2, seed=0, crop_size=8, resize_size=8, counter=counter)
    assert sorted(read_labels(ds).tolist()) == [997, 997, 998, 998, 999, 999]
    assert counter.skipped == 0 and counter.images == 6


def test_prepare_reads_a_tfds_dataset(imagenet2012_tars, tmp_path):
    """``python -m keras_alexnet.prepare --tfds imagenet2012``: every image of both splits
    once, with its true label (the validation labels re-derived from file names), in shards
    written by worker processes from their own slices of the split."""
    from keras_alexnet import prepare

    manual, data_dir, train_truth, val_truth = imagenet2012_tars
    out = tmp_path / "prepared"
    manifest = prepare.prepare(data_dir, out, tfds_name="imagenet2012", manual_dir=manual, resize_size=16,
                               shards=2, val_shards=2, encoding="png", workers=1, progress=False)
    assert manifest["source"] == f"tfds:imagenet2012 in {data_dir.resolve()}"
    assert [manifest["splits"][s]["count"] for s in ("train", "val")] == [6, 3]
    assert [len(manifest["splits"][s]["shards"]) for s in ("train", "val")] == [2, 2]
    assert manifest["splits"]["train"]["classes"] == sorted({WNID_A, WNID_B, "n01484850"})
    train = datasets.load_source(out, "train")
    assert train.element == "square" and train.num_classes == 1000
    assert sorted(identify(train, train_truth)) == sorted((w, w) for w in train_truth.values())
    val = datasets.load_source(out, "val")
    assert sorted(identify(val, val_truth)) == sorted((w, w) for w in val_truth.values())
    # Run again: every shard is done, nothing is rewritten.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")}
    prepare.prepare(data_dir, out, tfds_name="imagenet2012", resize_size=16, shards=2, val_shards=2,
                    encoding="png", workers=1, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")} == stamps
