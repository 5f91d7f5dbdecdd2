"""The paper's input pipelines (docs/paper.md §2, §4.1): a `keras_alexnet.sources.Source`
to batches of float32 network input.

- `training_dataset`: shuffle (seeded), decode once, rescale the shorter side to 256
  and take the central 256x256 (§2), a random 227x227 crop and a random horizontal
  flip per image, subtract the training set's mean image cropped at the same window
  (§2, §4.1), batch, then the PCA colour augmentation layer (§4.1).
- `evaluation_dataset`: the centre 227x227 crop, or the paper's ten crops (§4.1: four
  corners and the centre, and their horizontal reflections) as a ``(10, 227, 227, 3)``
  block per image.

The per-image steps are those of `keras_alexnet.images` (decoding, resizing) and
`keras_alexnet.preprocessing` (crops, mean, std, channel order).

Bad files: files that cannot be decoded (truncated, zero-byte, or over
`keras_alexnet.images.MAX_IMAGE_PIXELS`) are dropped (``ignore_errors``) and counted
by an optional `SkipCounter`; `SkipReport` prints the count at the end of every epoch.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_alexnet import preprocessing as pre_lib
from keras_alexnet.images import decode_square, load_image, no_autograph
from keras_alexnet.layers import (
    IMAGENET_EIGENVALUES,
    IMAGENET_EIGENVECTORS,
    PCAColorAugmentation,
)
from keras_alexnet.recipes import Recipe
from keras_alexnet.datasets import prepared_records
from keras_alexnet.sources import DatasetError

# docs/paper.md §4.1: alpha_i ~ N(0, 0.1), the recipe's default.
PCA_STDDEV = Recipe.pca_stddev


# ---------------------------------------------------------------------------------------
# Counting the files that cannot be decoded.


class SkipCounter:
    """Counts the images a pipeline could not decode, exactly.

    How: the pipeline numbers the elements of each pass (``enumerate`` after
    shuffling) and appends one sentinel element that is never dropped. After
    ``ignore_errors`` has dropped the undecodable ones, a ``scan`` sees the numbers of
    the survivors in order; every gap between consecutive numbers is a dropped file,
    and the sentinel closes the last gap. The counts are `tf.Variable` s on the host,
    updated by that sequential step, so after a pass over a finite dataset (one
    ``model.fit`` epoch, a ``for`` loop) they are exact; while iterating they include
    the few elements read ahead by ``prefetch``. Each pass (each new iterator) counts
    its own skips, so two passes over one bad file count it twice. A pass that stops
    early has counted the files it read (see ``drop_remainder`` of `training_dataset`).

    Example:
    >>> counter = SkipCounter()
    >>> ds = training_dataset(source, 128, counter=counter)  # doctest: +SKIP
    >>> for images, labels in ds: ...  # doctest: +SKIP
    >>> counter.skipped  # doctest: +SKIP
    """

    def __init__(self):
        with tf.init_scope():
            self._skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped")
            self._images = tf.Variable(0, dtype=tf.int64, trainable=False, name="images")

    @property
    def skipped(self):
        """Number of files that could not be decoded so far (int)."""
        return int(self._skipped.numpy())

    @property
    def images(self):
        """Number of images decoded so far (int)."""
        return int(self._images.numpy())

    def count(self, last_index, element):
        """`tf.data.Dataset.scan` step over ``(index, image, label)`` survivors.

        Args:
            last_index: int64 index of the previous survivor (-1 at the start).
            element: ``(index, image, label)``; ``label < 0`` marks the sentinel.

        Returns:
            ``(index, (image, label))``: the new state and the element without its index.
        """
        index, image, label = element
        is_image = tf.cast(label >= 0, tf.int64)
        updates = [
            self._skipped.assign_add(index - last_index - 1),
            self._images.assign_add(is_image),
        ]
        with tf.control_dependencies(updates):
            return index, (tf.identity(image), tf.identity(label))


class SkipReport(keras.callbacks.Callback):
    """Keras callback: prints, and logs as ``skipped_files``, the undecodable files.

    At the end of every epoch it prints how many files of that epoch could not be
    decoded (and the total so far), and adds ``skipped_files`` (this epoch) to the logs
    so `keras.callbacks.CSVLogger` / History record it.

    Args:
        counter: the `SkipCounter` given to the training pipeline.
        non_image_files: number of non-image files left out at listing (reported once).
    """

    def __init__(self, counter, non_image_files=0):
        super().__init__()
        self.counter = counter
        self.non_image_files = int(non_image_files)
        self._start = 0

    def on_train_begin(self, logs=None):
        if self.non_image_files:
            print(f"Data: {self.non_image_files} non-image file(s) left out when listing.")

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self.counter.skipped

    def on_epoch_end(self, epoch, logs=None):
        skipped = self.counter.skipped - self._start
        if logs is not None:
            logs["skipped_files"] = skipped
        print(
            f"Epoch {epoch + 1}: {skipped} undecodable file(s) skipped "
            f"({self.counter.skipped} in total)."
        )


# ---------------------------------------------------------------------------------------
# Pipelines.


def _preprocessing(stats, mean, crop_size, resize_size):
    """The `keras_alexnet.preprocessing.Preprocessing` of a mean mode (or array) and sizes."""
    pre_lib.check_sizes(crop_size, resize_size)
    array = pre_lib.select_mean(stats, mean)
    if isinstance(mean, str):
        mode = mean
    else:
        mode = "none" if array is None else ("channel" if array.ndim == 1 else "image")
    return pre_lib.Preprocessing(crop_size, resize_size, mode, array)


def _mean_tensor(stats, mean, resize_size):
    """The mean to subtract as a float32 constant (`keras_alexnet.preprocessing.select_mean`,
    resized to the square), or None."""
    mean = pre_lib.resize_mean(pre_lib.select_mean(stats, mean), resize_size)
    return None if mean is None else tf.constant(mean)

def square_loader(source, resize_size):
    """``data -> float32 (resize_size, resize_size, 3)`` for a source's elements: decode,
    shorter side to ``resize_size`` and central square (`keras_alexnet.images.load_image`),
    or only decode for a prepared source, whose squares were made once.

    Raises:
        DatasetError: a prepared source of squares of another size than ``resize_size``.
    """
    if source.element != "square":
        from_path = source.element == "path"
        return lambda data: load_image(data, resize_size, from_path)
    if source.resize_size != resize_size:
        raise DatasetError(
            f"{source.location} holds {source.resize_size}x{source.resize_size} squares; the recipe "
            f"asks for {resize_size}x{resize_size}. Prepare the data with --resize-size {resize_size}, "
            "or use the original folder."
        )
    return lambda data: decode_square(data, resize_size, source.encoding)


def _examples(source, shuffle, seed, num_shards, shard_index, shuffle_buffer):
    """(string, label) elements of one shard, shuffled per iteration if asked."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}.")
    if source.element == "square":  # Prepared shards: split by file between workers.
        files = source.files[shard_index::num_shards]
        if not files:
            raise DatasetError(f"{source.location} has {len(source.files)} shard file(s), fewer than "
                               f"{num_shards} workers: prepare it again with more --shards.")
        ds = prepared_records(files, source.label_map, shuffle=shuffle, seed=seed)
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        return ds
    if source.paths is None:  # TFDS: records stream from disk; shuffle with a buffer.
        ds = source.dataset
        if num_shards > 1:
            ds = ds.shard(num_shards, shard_index)
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        return ds
    # Folders: a uniform permutation of this shard's list, new every iteration.
    paths = tf.constant(source.paths[shard_index::num_shards])
    labels = tf.constant(source.labels[shard_index::num_shards])
    count = int(paths.shape[0])
    if count == 0:
        raise DatasetError(f"Shard {shard_index} of {num_shards} of {source.location} is empty.")
    if shuffle:
        order = (
            tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            .take(1)
            .map(no_autograph(
                lambda key: tf.random.experimental.stateless_shuffle(
                    tf.range(count), seed=tf.stack([key, tf.constant(count, tf.int64)])
                )
            ))
            .unbatch()
        )
    else:
        order = tf.data.Dataset.range(count)
    return order.map(no_autograph(lambda i: (tf.gather(paths, i), tf.gather(labels, i))))


def _views(ds, view, view_shape, counter, seeds=None, drop_errors=True):
    """Maps ``view(data[, seed])`` over ``(data, label)`` in parallel, in order.

    Undecodable elements are dropped (not with ``drop_errors=False``, for a prepared
    source: its squares all decode, and ``ignore_errors`` would also hide a damaged
    shard's read error); with a `SkipCounter` they are counted exactly
    (see its docstring: numbered elements, a sentinel, a scan over the survivors).
    """
    if seeds is None:
        seeds = tf.data.Dataset.from_tensors(tf.zeros([2], tf.int64)).repeat()
    if counter is None:
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            no_autograph(lambda example, seed: (view(example[0], seed), example[1])),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return ds.ignore_errors(log_warning=True) if drop_errors else ds

    sentinel = tf.data.Dataset.from_tensors((tf.constant(""), tf.constant(-1, tf.int32)))
    ds = ds.concatenate(sentinel).enumerate()

    def guarded_view(numbered, seed):
        index, (data, label) = numbered
        image = tf.cond(
            label < 0, lambda: tf.zeros(view_shape), lambda: view(data, seed)
        )
        return index, image, label

    ds = tf.data.Dataset.zip((ds, seeds)).map(
        no_autograph(guarded_view), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if drop_errors:
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.scan(tf.constant(-1, tf.int64), no_autograph(counter.count))
    return ds.filter(no_autograph(lambda image, label: label >= 0))


def _batch(ds, batch_size, drop_remainder, num_shards):
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if num_shards > 1:  # Sharded by hand: tf.distribute must not shard again.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
        ds = ds.with_options(options)
    return ds


def training_dataset(
    source,
    batch_size=128,
    *,
    stats=None,
    mean=None,
    crop_size=pre_lib.CROP_SIZE,
    resize_size=pre_lib.RESIZE_SIZE,
    pca_stddev=PCA_STDDEV,
    seed=None,
    num_shards=1,
    shard_index=0,
    shuffle_buffer=10_000,
    drop_remainder=False,
    counter=None,
    preprocessing=None,
    data_service=None,
):
    """The paper's training input (§2, §4.1), one pass over the source per iteration.

    Per image: decode once, shorter side to ``resize_size``, central square, random
    ``crop_size`` crop, minus the mean (image cropped at the same window, or channel
    mean), random horizontal flip. Per batch: `PCAColorAugmentation` (training mode)
    with the dataset's eigen-decomposition from ``stats`` (its ``pca_eigenvalues``),
    or ImageNet's published values without ``stats``.

    Randomness: with an integer ``seed`` the shuffle order, crops, flips and colour
    noise are a function of the seed and of the iteration number (each new iteration,
    i.e. epoch, differs; two datasets built with the same seed give the same batches).
    Folder sources are fully reshuffled every epoch; TFDS sources use a shuffle buffer
    of ``shuffle_buffer`` records; prepared sources (`keras_alexnet.datasets.prepared_source`)
    a new order of their shard files and that buffer.

    Distribution: ``num_shards`` / ``shard_index`` keep every ``num_shards``-th example
    (before shuffling; of a prepared source every ``num_shards``-th shard file) and switch tf.distribute's auto-sharding off; with
    `tf.distribute.Strategy.distribute_datasets_from_function` pass
    ``ctx.num_input_pipelines`` and ``ctx.input_pipeline_id``. Without them the dataset
    works with ``experimental_distribute_dataset`` / ``model.fit`` as is.

    Args:
        source: a `Source`.
        batch_size: images per batch.
        stats: a `keras_alexnet.stats.DatasetStats` (mean and PCA), or None.
        mean: one of `keras_alexnet.preprocessing.MEAN_MODES`; default
            (None) ``TRAINED_MEAN`` when ``stats`` is given, else ``"none"``.
        crop_size: side of the crops (227).
        resize_size: side of the central square (256).
        pca_stddev: standard deviation of the PCA noise coefficients (0.1); 0 disables.
        seed: integer seed, or None for nondeterministic order and augmentation.
        num_shards: number of shards to split the source into.
        shard_index: which shard this pipeline reads.
        shuffle_buffer: shuffle buffer size for TFDS and prepared sources (prepared
            shards are also read in a new order every epoch).
        drop_remainder: drop the last partial batch (static batch shape). Keep False
            with a ``counter`` and ``model.fit``: from its second epoch on, Keras stops
            after as many batches as the first epoch had, so only a partial last batch
            makes it read to the end of the data, where the count is completed.
        counter: optional `SkipCounter` counting undecodable files.
        preprocessing: a `keras_alexnet.preprocessing.Preprocessing` (a fine-tuned
            network's input: its sizes, mean, std and channel order) instead of
            ``mean``, ``crop_size`` and ``resize_size``. The PCA noise (``stats``) is
            added to the mean-subtracted RGB crops, before the std and channel order.

    Returns:
        `tf.data.Dataset` of ``(images, labels)``: float32
        ``(batch, crop_size, crop_size, 3)`` and int32 ``(batch,)``.
    """
    pre = preprocessing or _preprocessing(stats, mean, crop_size, resize_size)
    crop_size, resize_size = pre.crop_size, pre.resize_size
    mean_t = None if pre.mean is None else tf.constant(pre.mean)
    load = square_loader(source, resize_size)

    def view(data, view_seed):
        image = load(data)
        return pre_lib.random_crop_and_flip(image, view_seed, crop_size, mean_t)

    if data_service:
        ds = _service_views(source, view, seed, shuffle_buffer)
    else:
        ds = _examples(source, True, seed, num_shards, shard_index, shuffle_buffer)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = _views(ds, view, [crop_size, crop_size, 3], counter, seeds, source.element != "square")
    ds = _batch(ds, batch_size, drop_remainder, num_shards)
    if pca_stddev:
        if stats is not None:
            eigenvalues, eigenvectors = stats.pca_eigenvalues, stats.eigenvectors
        else:
            eigenvalues, eigenvectors = IMAGENET_EIGENVALUES, IMAGENET_EIGENVECTORS
        pca = PCAColorAugmentation(eigenvalues, eigenvectors, stddev=pca_stddev, seed=seed)
        # Sequential map: the layer's RNG state advances once per batch, in order.
        ds = ds.map(no_autograph(lambda images, labels: (pca(images, training=True), labels)))
    if pre.std is not None or pre.channel_order != "RGB":
        ds = ds.map(no_autograph(lambda images, labels: (pre_lib.normalize(images, pre.std, pre.channel_order),
                                                         labels)))
    if data_service:
        ds = ds.apply(tf.data.experimental.service.distribute(
            processing_mode=SERVICE_PROCESSING_MODE, service=data_service))
    return ds.prefetch(tf.data.AUTOTUNE)


# The dispatcher hands each input worker splits of the source (the list of images, or of
# prepared shard files): every pass (a job) delivers each image at most once, exactly once
# while no worker fails. ("parallel_epochs" would make every worker read everything: one
# pass per worker.)
SERVICE_PROCESSING_MODE = "distributed_epoch"


def _service_views(source, view, seed, shuffle_buffer):
    """`training_dataset`'s views for a tf.data service (``data_service``): the source is a
    dataset the dispatcher can split (indices into the file list, or the shard files), and
    each view draws its crop, flip and seed on the worker that makes it. Batches are then a
    function of which worker served what: the same seed no longer gives the same batches,
    the price of input workers on other machines. Undecodable files are dropped (with a
    logged warning on the worker) but not counted: the run's `SkipCounter` lives in this
    process, not on the workers."""
    if source.element == "square":
        ds = prepared_records(source.files, source.label_map, shuffle=True, seed=seed)
    elif source.paths is not None:
        paths, labels = tf.constant(source.paths), tf.constant(source.labels)
        ds = (tf.data.Dataset.range(source.num_examples)
              .shuffle(min(source.num_examples, shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
              .map(no_autograph(lambda i: (tf.gather(paths, i), tf.gather(labels, i)))))
    else:
        raise DatasetError(f"{source.location}: a TFDS source cannot be split between tf.data service "
                           "workers here; prepare it (python -m keras_alexnet.prepare) or use a folder.")
    ds = ds.map(no_autograph(lambda data, label: (view(data, tf.random.uniform([2], maxval=2**62, dtype=tf.int64)),
                                                  label)),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds if source.element == "square" else ds.ignore_errors(log_warning=True)


def evaluation_dataset(
    source,
    batch_size=128,
    *,
    stats=None,
    mean=None,
    crops="center",
    crop_size=pre_lib.CROP_SIZE,
    resize_size=pre_lib.RESIZE_SIZE,
    std=None,
    channel_order="RGB",
    num_shards=1,
    shard_index=0,
    counter=None,
    preprocessing=None,
):
    """The paper's test input (§4.1), in listing order, every image once.

    Args:
        source: a `Source`.
        batch_size: images per batch (with ``crops="ten"``, each image is 10 crops).
        stats: a `keras_alexnet.stats.DatasetStats` (the *training* set's), or None.
        mean: one of `keras_alexnet.preprocessing.MEAN_MODES`; default as for
            `training_dataset`.
            Or the mean itself: a ``(3,)`` or ``(S, S, 3)`` RGB array in pixel units.
        crops: ``"center"`` (one centre crop) or ``"ten"`` (`keras_alexnet.preprocessing.ten_crops`).
        crop_size: side of the crops (227).
        resize_size: side of the central square (256).
        std, channel_order: see `keras_alexnet.preprocessing.normalize` (a converted network's own input, e.g.
            torchvision's division by the ImageNet std, Caffe's BGR); default: none.
        num_shards: number of shards (every ``num_shards``-th example).
        shard_index: which shard.
        counter: optional `SkipCounter` counting undecodable files.
        preprocessing: a model's `keras_alexnet.preprocessing.Preprocessing`, instead of
            ``stats``, ``mean``, ``crop_size``, ``resize_size``, ``std`` and ``channel_order``.

    Returns:
        `tf.data.Dataset` of ``(images, labels)``: images float32
        ``(batch, crop_size, crop_size, 3)`` for ``"center"``, or
        ``(batch, 10, crop_size, crop_size, 3)`` for ``"ten"`` (average the softmax over
        axis 1); labels int32 ``(batch,)``. The last batch may be smaller.
    """
    if crops not in pre_lib.CROPS:
        raise ValueError(f"crops must be one of {pre_lib.CROPS}, got {crops!r}.")
    if preprocessing is not None:
        pre = preprocessing
        stats, crop_size, resize_size = None, pre.crop_size, pre.resize_size
        mean = pre.mean if pre.mean is not None else "none"
        std, channel_order = pre.std, pre.channel_order
    pre_lib.check_sizes(crop_size, resize_size)
    mean_t = _mean_tensor(stats, mean, resize_size)
    load = square_loader(source, resize_size)
    crop_shape = [crop_size, crop_size, 3]
    view_shape = [10, *crop_shape] if crops == "ten" else crop_shape

    def view(data, unused_seed):
        square = load(data)
        return pre_lib.network_views(square, crops, crop_size, mean_t, std, channel_order)

    ds = _examples(source, False, None, num_shards, shard_index, 1)
    ds = _views(ds, view, view_shape, counter, drop_errors=source.element != "square")
    ds = _batch(ds, batch_size, False, num_shards)
    return ds.prefetch(tf.data.AUTOTUNE)


def preprocessed_dataset(source, preprocessing, batch_size=32, crops="center", counter=None):
    """`evaluation_dataset` of ``source`` with a model's
    `keras_alexnet.preprocessing.Preprocessing` (what evaluation and predictions feed
    ``Run.model``)."""
    return evaluation_dataset(source, batch_size, crops=crops, counter=counter, preprocessing=preprocessing)
