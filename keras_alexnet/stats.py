"""Training-set statistics for the paper's preprocessing (docs/paper.md §2, §4.1).

The paper subtracts "the mean activity over the training set from each pixel" (§2; the
mean *image*, 256x256x3) and adds PCA colour noise along the eigenvectors of "the 3x3
covariance matrix of RGB pixel values throughout the ImageNet training set" (§4.1).
This module computes both in one streaming pass, with float64 accumulators (the sum of
the images, the sum of the pixels and the sum of the pixels' outer products), so the
result does not depend on the order or the batch size and memory stays bounded.

Command line::

    python -m keras_alexnet.stats --data-dir DIR [--split train] [--max-images N] \\
        [--resize-size 256] [--tfds-name NAME] --out stats.npz

It writes an ``.npz`` file (read it with `load_stats`) and prints the eigenvalues and
eigenvectors as JSON.

Scales. Everything is stored on the ``[0, 255]`` pixel scale used by the pipeline:

- ``covariance`` and its ``eigenvalues`` are in pixel units squared (ImageNet-like data:
  about 1.5e4 for the largest eigenvalue).
- ``eigenvalues_01`` = ``eigenvalues / 255**2``: the same eigenvalues for pixels in
  ``[0, 1]``, comparable to the published fb.resnet.torch values
  ``[0.2175, 0.0188, 0.0045]``.
- ``pca_eigenvalues`` = ``eigenvalues_01 * 255``: what `PCAColorAugmentation` takes for
  ``[0, 255]`` pixels. The paper's noise ``P (alpha * lambda)`` is linear in ``lambda``,
  so keeping the noise the same fraction of the pixel range scales ``lambda`` by 255,
  not by 255**2 (the Caffe-era ``[55.46, 4.794, 1.148]`` are exactly ``0.2175 * 255``,
  ...). Passing ``eigenvalues`` to the layer instead would make the noise 255 times too
  large. `keras_alexnet.data.training_dataset` uses ``pca_eigenvalues``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np
import tensorflow as tf

from keras_alexnet import data as data_lib, datasets, preprocessing as pre_lib, sources
from keras_alexnet.images import no_autograph

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetStats:
    """Mean image, channel mean and RGB covariance of a training set (``[0, 255]`` scale).

    Attributes:
        mean_image: float32 ``(S, S, 3)``, the mean of the images after rescaling the
            shorter side to ``S = resize_size`` and taking the central square (§2).
        channel_mean: float64 ``(3,)``, the mean RGB pixel (the mean image's mean).
        covariance: float64 ``(3, 3)``, covariance of the RGB values of all pixels.
        eigenvalues: float64 ``(3,)``, eigenvalues of ``covariance``, descending.
        eigenvectors: float64 ``(3, 3)``, matching unit eigenvectors as **columns**, signed
            like the published ImageNet table (first one negative, the others with a
            positive red component).
        num_images: images that went into the statistics.
        num_undecodable: image files that could not be decoded (skipped).
        num_non_image: non-image files left out when listing.
        class_names: the source's class names.
        resize_size: ``S``.
        source: where the images came from (directory or ``tfds:<name>``).
    """

    mean_image: np.ndarray
    channel_mean: np.ndarray
    covariance: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    num_images: int
    num_undecodable: int
    num_non_image: int
    class_names: tuple
    resize_size: int
    source: str

    @property
    def num_skipped(self):
        """Undecodable plus non-image files."""
        return self.num_undecodable + self.num_non_image

    @property
    def eigenvalues_01(self):
        """Eigenvalues of the covariance of pixels scaled to ``[0, 1]``."""
        return self.eigenvalues / 255.0**2

    @property
    def pca_eigenvalues(self):
        """Eigenvalues for `PCAColorAugmentation` on ``[0, 255]`` pixels (module docstring)."""
        return self.eigenvalues_01 * 255.0

    def save(self, path):
        """Writes the statistics to an ``.npz`` file (`load_stats` reads it).

        Args:
            path: output file name; numpy appends ``.npz`` if it is missing.
        """
        np.savez(
            path,
            format_version=FORMAT_VERSION,
            mean_image=self.mean_image.astype(np.float32),
            channel_mean=self.channel_mean,
            covariance=self.covariance,
            eigenvalues=self.eigenvalues,
            eigenvectors=self.eigenvectors,
            num_images=self.num_images,
            num_undecodable=self.num_undecodable,
            num_non_image=self.num_non_image,
            class_names=np.array(self.class_names, dtype=str),
            resize_size=self.resize_size,
            source=self.source,
        )

    def summary(self):
        """JSON-ready dict of the figures (eigen-decomposition at both scales, counts)."""
        return {
            "source": self.source,
            "num_images": self.num_images,
            "num_undecodable": self.num_undecodable,
            "num_non_image": self.num_non_image,
            "resize_size": self.resize_size,
            "channel_mean_255": self.channel_mean.tolist(),
            "covariance_255": self.covariance.tolist(),
            "eigenvalues_255": self.eigenvalues.tolist(),
            "eigenvalues_01": self.eigenvalues_01.tolist(),
            "pca_eigenvalues_255": self.pca_eigenvalues.tolist(),
            "eigenvectors_columns": self.eigenvectors.tolist(),
        }


def load_stats(path):
    """Reads a file written by `DatasetStats.save` / ``python -m keras_alexnet.stats``.

    Args:
        path: the ``.npz`` file.

    Returns:
        A `DatasetStats`.
    """
    with np.load(path, allow_pickle=False) as f:
        if int(f["format_version"]) != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported stats format {int(f['format_version'])}.")
        return DatasetStats(
            mean_image=f["mean_image"],
            channel_mean=f["channel_mean"],
            covariance=f["covariance"],
            eigenvalues=f["eigenvalues"],
            eigenvectors=f["eigenvectors"],
            num_images=int(f["num_images"]),
            num_undecodable=int(f["num_undecodable"]),
            num_non_image=int(f["num_non_image"]),
            class_names=tuple(str(n) for n in f["class_names"]),
            resize_size=int(f["resize_size"]),
            source=str(f["source"]),
        )


def eigen_decomposition(covariance):
    """Eigenvalues (descending) and column eigenvectors of a 3x3 covariance.

    Signs follow the published ImageNet table: the first eigenvector has a negative
    component sum, the others a non-negative first (red) component.

    Args:
        covariance: symmetric ``(3, 3)`` array.

    Returns:
        ``(eigenvalues (3,), eigenvectors (3, 3))``, eigenvectors as columns.
    """
    values, vectors = np.linalg.eigh(np.asarray(covariance, np.float64))
    values, vectors = values[::-1].copy(), vectors[:, ::-1].copy()
    if vectors[:, 0].sum() > 0:
        vectors[:, 0] *= -1
    for j in (1, 2):
        if vectors[0, j] < 0:
            vectors[:, j] *= -1
    return values, vectors


def _subset(source, max_images, seed):
    """The source, or a seeded random subset of ``max_images`` of a folder's files."""
    if max_images is None or max_images >= source.num_examples:
        return source
    if source.paths is None:  # TFDS records are stored shuffled: take the first ones.
        return dataclasses.replace(
            source, dataset=source.dataset.take(max_images), num_examples=max_images
        )
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(source.num_examples, max_images, replace=False))
    paths, labels = source.paths[keep], source.labels[keep]
    return dataclasses.replace(
        source,
        paths=paths,
        labels=labels,
        num_examples=max_images,
        dataset=tf.data.Dataset.from_tensor_slices((paths, labels)),
    )


def _batch_sums(images):
    """float64 sums of a batch: images (S, S, 3), pixels (3,), outer products (3, 3)."""
    x = tf.cast(images, tf.float64)
    pixels = tf.reshape(x, [-1, 3])
    return (
        tf.reduce_sum(x, axis=0),
        tf.reduce_sum(pixels, axis=0),
        tf.matmul(pixels, pixels, transpose_a=True),
        tf.shape(x, out_type=tf.int64)[0],
    )


def compute_stats(
    source_or_dir,
    max_images=None,
    resize_size=pre_lib.RESIZE_SIZE,
    *,
    split="train",
    batch_size=32,
    seed=0,
    progress=True,
):
    """Streams a training set once and computes its `DatasetStats`.

    Every image is decoded, rescaled (shorter side ``resize_size``) and centre-cropped
    exactly as `keras_alexnet.images.load_image` does for training (a prepared source's
    squares are only decoded: `keras_alexnet.data.square_loader`). Undecodable files are
    skipped and counted.

    Args:
        source_or_dir: a `keras_alexnet.sources.Source`, or a directory for
            `keras_alexnet.datasets.load_source` (a folder, or a prepared directory).
        max_images: use at most this many images: a seeded random subset of a folder's
            files (all classes represented), or the first records of a TFDS source.
        resize_size: side of the central square.
        split: the split to list when a directory is given.
        batch_size: images summed per step (does not change the result).
        seed: seed of the ``max_images`` subset.
        progress: show a tqdm progress bar.

    Returns:
        A `DatasetStats`.

    Raises:
        keras_alexnet.sources.DatasetError: when no image could be decoded.
    """
    if isinstance(source_or_dir, sources.Source):
        source = source_or_dir
    else:
        source = datasets.load_source(source_or_dir, split)
    subset = _subset(source, max_images, seed)
    load = data_lib.square_loader(subset, resize_size)
    ds = subset.dataset.map(
        no_autograph(lambda x, _: load(x)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,  # sums do not depend on the order
    )
    if subset.element != "square":  # a prepared shard's errors are damage, not a bad photo
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(batch_size).map(no_autograph(_batch_sums))
    ds = ds.prefetch(tf.data.AUTOTUNE)

    image_sum = np.zeros((resize_size, resize_size, 3), np.float64)
    pixel_sum = np.zeros(3, np.float64)
    outer_sum = np.zeros((3, 3), np.float64)
    count = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=subset.num_examples, unit="img", desc="stats", file=sys.stderr)
    with datasets.naming_damaged_shard(subset):
        for images, pixels, outer, n in ds:
            image_sum += images.numpy()
            pixel_sum += pixels.numpy()
            outer_sum += outer.numpy()
            count += int(n)
            if bar is not None:
                bar.update(int(n))
    if bar is not None:
        bar.close()
    if count == 0:
        raise sources.DatasetError(f"No decodable image in {subset.location}.")

    num_pixels = count * resize_size * resize_size
    channel_mean = pixel_sum / num_pixels
    covariance = outer_sum / num_pixels - np.outer(channel_mean, channel_mean)
    eigenvalues, eigenvectors = eigen_decomposition(covariance)
    return DatasetStats(
        mean_image=(image_sum / count).astype(np.float32),
        channel_mean=channel_mean,
        covariance=covariance,
        eigenvalues=eigenvalues,
        eigenvectors=eigenvectors,
        num_images=count,
        num_undecodable=subset.num_examples - count,
        num_non_image=len(source.non_image_files),
        class_names=tuple(source.class_names),
        resize_size=int(resize_size),
        source=source.location,
    )


def main(argv=None):
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_alexnet.stats",
        description="Mean image and RGB PCA of a training set (AlexNet §2, §4.1).",
    )
    parser.add_argument("--data-dir", required=True, help="image folder or TFDS data dir")
    parser.add_argument("--split", default="train")
    parser.add_argument("--tfds-name", default=None, help="TFDS dataset name (optional)")
    parser.add_argument("--manual-dir", default=None, help="TFDS manual dir (imagenet2012)")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--resize-size", type=int, default=pre_lib.RESIZE_SIZE)
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-images subset")
    parser.add_argument("--out", required=True, help="output .npz file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    source = datasets.load_source(
        args.data_dir, args.split, tfds_name=args.tfds_name, manual_dir=args.manual_dir
    )
    stats = compute_stats(
        source,
        args.max_images,
        args.resize_size,
        seed=args.seed,
        progress=not args.no_progress,
    )
    stats.save(args.out)
    print(json.dumps(stats.summary(), indent=2))
    print(
        f"{stats.num_images} images, {stats.num_undecodable} undecodable and "
        f"{stats.num_non_image} non-image file(s) skipped; wrote {args.out}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    from keras_alexnet import startup

    startup.own_process()  # the package is imported: freeze it (keras_alexnet/startup.py)
    main()
