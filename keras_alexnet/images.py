"""Decoding an image file and resizing it: the first steps of every preprocessing.

Pure TF functions that work eagerly and inside `tf.data.Dataset.map`:

- `decode_image`: JPEG / PNG / GIF / BMP bytes by content to RGB uint8 (grayscale and
  CMYK become RGB, a GIF its first frame), after `check_image_size` has refused, from
  the header alone (`image_size`), an image larger than `MAX_IMAGE_PIXELS`: a
  decompression bomb (a small file whose header says 30,000 x 30,000 would decode into
  2.7 GB) fails like an undecodable file, and a pipeline drops and counts it;
- `resize_shorter_side`, `central_crop` and `resize_central_square`: the resize of
  docs/paper.md §2 (shorter side to a size, then the central square);
- `load_image`: a file (or encoded bytes) to that float32 square;
- `decode_square`: a square stored once by ``python -m keras_alexnet.prepare`` back to
  float32 (no resize);
- `no_autograph`: how the package hands its functions to ``Dataset.map``.

The sizes themselves (256, 227 and the rule between them) are decided in
`keras_alexnet.preprocessing`.
"""

from __future__ import annotations

import tensorflow as tf


def no_autograph(fn):
    """``fn`` for `tf.data.Dataset` ``map`` / ``filter`` / ``scan``, traced as written.

    The package's pipeline functions are TensorFlow ops (`tf.cond`, no Python branch on a
    tensor), so AutoGraph, which ``map`` runs on a function and everything it calls at
    each trace, rewrites their source for nothing: 0.9 s of CPU of a tiny ``train.py`` run
    (6.2 s against 5.3 s, ``python bench/bench_startup.py``, 2 cores). A Python branch on a
    tensor fails loudly at trace time instead of being converted."""
    return tf.autograph.experimental.do_not_convert(fn)


# The largest image decoded: Pillow's default ``Image.MAX_IMAGE_PIXELS`` (its
# decompression-bomb limit, 1024 * 1024 * 1024 // 4 // 3), e.g. 10,000 x 8,947. Decoded
# as RGB uint8 that is 268 MB, and the float resize several times that, per image and
# per parallel map call. ImageNet's largest training photos (a few thousand pixels a
# side) are far below; a 30,000 x 30,000 header (2.7 GB) is refused.
MAX_IMAGE_PIXELS = 89_478_485


def _header_bytes(encoded, offset, length):
    """int64 bytes ``encoded[offset:offset + length]`` (zero-padded if the data is shorter)."""
    raw = tf.io.decode_raw(tf.strings.substr(encoded, offset, length), tf.uint8)
    raw = tf.pad(raw, [[0, length - tf.shape(raw)[0]]])
    return tf.reshape(tf.cast(raw, tf.int64), [length])


def _uint(raw, little_endian):
    weights = [256 ** i for i in range(raw.shape[0])]
    return tf.reduce_sum(raw * tf.constant(weights if little_endian else weights[::-1], tf.int64))


def image_size(encoded):
    """``(height, width)`` of encoded image bytes, read from the header, never decoded.

    JPEG: `tf.io.extract_jpeg_shape` (the SOF marker). PNG: the IHDR chunk (bytes
    16-24, big-endian). GIF: the logical screen (bytes 6-10, little-endian). BMP: the
    info header (bytes 18-26, little-endian; a negative height is a top-down bitmap).
    Anything else gives ``(0, 0)``: unknown here, left to the decoder.

    Args:
        encoded: scalar string tensor of encoded image bytes.

    Returns:
        int64 tensor ``(2,)``. Raises `tf.errors.InvalidArgumentError` for a JPEG whose
        header cannot be parsed (it could not be decoded either).
    """
    magic = tf.strings.substr(encoded, 0, 8)

    def jpeg():
        return tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64)

    def png():
        return tf.stack([_uint(_header_bytes(encoded, 20, 4), False), _uint(_header_bytes(encoded, 16, 4), False)])

    def gif():
        return tf.stack([_uint(_header_bytes(encoded, 8, 2), True), _uint(_header_bytes(encoded, 6, 2), True)])

    def bmp():
        signed = lambda v: tf.abs(tf.where(v >= 2 ** 31, v - 2 ** 32, v))  # noqa: E731
        return tf.stack([signed(_uint(_header_bytes(encoded, 22, 4), True)),
                         signed(_uint(_header_bytes(encoded, 18, 4), True))])

    return tf.case([
        (tf.equal(tf.strings.substr(magic, 0, 3), b"\xff\xd8\xff"), jpeg),
        (tf.equal(magic, b"\x89PNG\r\n\x1a\n"), png),
        (tf.equal(tf.strings.substr(magic, 0, 4), b"GIF8"), gif),
        (tf.equal(tf.strings.substr(magic, 0, 2), b"BM"), bmp),
    ], default=lambda: tf.zeros([2], tf.int64), exclusive=False)


def check_image_size(encoded, max_pixels=MAX_IMAGE_PIXELS):
    """``encoded``, after checking that its header's ``height * width <= max_pixels``.

    Raises:
        tf.errors.InvalidArgumentError: a larger image (inside tf.data: dropped by
        ``ignore_errors`` and counted as skipped, like an undecodable file).
    """
    size = image_size(encoded)
    check = tf.debugging.assert_less_equal(
        size[0] * size[1], tf.constant(max_pixels, tf.int64),
        message=f"image larger than MAX_IMAGE_PIXELS={max_pixels} (height, width in the header)",
        summarize=2)
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


def decode_image(encoded):
    """Decodes JPEG / PNG / GIF / BMP bytes by content to RGB.

    Grayscale becomes RGB by repetition, CMYK JPEGs are converted by the decoder, a GIF
    gives its first frame. An image larger than `MAX_IMAGE_PIXELS` (read from its
    header, `check_image_size`) is refused before anything is decoded.

    Args:
        encoded: scalar string tensor of encoded image bytes.

    Returns:
        uint8 tensor ``(height, width, 3)``. Raises `tf.errors.InvalidArgumentError`
        (inside tf.data: an error that `ignore_errors` drops) for undecodable data and
        for images over the pixel limit.
    """
    encoded = check_image_size(encoded)
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _shorter_side_shape(shape, size):
    """``(height, width)`` with the shorter side ``size``, the other rounded."""
    shorter = tf.cast(tf.reduce_min(shape), tf.float64)
    return tf.cast(tf.round(tf.cast(shape, tf.float64) * size / shorter), tf.int32)


def _in_range(image):
    # Bilinear / triangle weights are >= 0 and sum to 1; the clip only removes float
    # round-off (255.00005) so pixels stay in [0, 255].
    return tf.clip_by_value(image, 0.0, 255.0)


def resize_shorter_side(image, size):
    """Rescales an image so that its shorter side is ``size`` (docs/paper.md §2).

    Bilinear; when shrinking, antialiased (the triangle filter is widened by the
    scale, like Pillow's resize), so large photos are not aliased. An image whose
    shorter side already is ``size`` is only cast.

    Args:
        image: ``(height, width, 3)`` tensor with pixels in ``[0, 255]``, any dtype.
        size: target length of the shorter side.

    Returns:
        float32 tensor in ``[0, 255]``; shorter side ``size``, longer side
        ``round(longer * size / shorter)``.
    """
    shape = tf.shape(image)[:2]
    shorter = tf.reduce_min(shape)
    new_shape = _shorter_side_shape(shape, size)
    return tf.case(
        [
            (tf.equal(shorter, size), lambda: tf.cast(image, tf.float32)),
            # Enlarging: antialiasing changes nothing (up to round-off) but costs 2.5x.
            (tf.less(shorter, size), lambda: _in_range(tf.image.resize(image, new_shape))),
        ],
        default=lambda: _in_range(tf.image.resize(image, new_shape, antialias=True)),
    )


def central_crop(image, size):
    """The central ``size x size`` window (offsets rounded down).

    Args:
        image: ``(height, width, channels)`` tensor with both sides >= ``size``.
        size: side of the square crop.

    Returns:
        ``(size, size, channels)`` tensor.
    """
    shape = tf.shape(image)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    crop = image[top : top + size, left : left + size]
    crop.set_shape([size, size, image.shape[-1]])
    return crop


def resize_central_square(image, size):
    """``central_crop(resize_shorter_side(image, size), size)``, computing only the square.

    When shrinking, the antialiased resampling (`tf.raw_ops.ScaleAndTranslate`, what
    `tf.image.resize` runs with ``antialias=True``) is evaluated only on the central
    window, with the same per-axis scales: the result equals the full resize followed
    by the crop up to float round-off, for about 10-25% less work on 4:3 photos.

    Args:
        image: ``(height, width, 3)`` tensor with pixels in ``[0, 255]``, any dtype.
        size: side of the square.

    Returns:
        float32 ``(size, size, 3)`` tensor in ``[0, 255]``.
    """
    shape = tf.shape(image)[:2]
    new_shape = _shorter_side_shape(shape, size)

    def shrink():
        scale = tf.cast(new_shape, tf.float32) / tf.cast(shape, tf.float32)
        offset = tf.cast((new_shape - size) // 2, tf.float32)
        square = tf.raw_ops.ScaleAndTranslate(
            images=image[tf.newaxis],
            size=[size, size],
            scale=scale,
            translation=-offset,
            kernel_type="triangle",
            antialias=True,
        )[0]
        return _in_range(square)

    square = tf.cond(
        tf.reduce_min(shape) > size,
        shrink,
        lambda: central_crop(resize_shorter_side(image, size), size),
    )
    square.set_shape([size, size, 3])
    return square


def load_image(data, resize_size, from_path=True):
    """Reads, decodes, rescales the shorter side and takes the central square (§2).

    Args:
        data: scalar string: a file path if ``from_path``, else encoded image bytes.
        resize_size: side of the square (256 in the paper).
        from_path: whether ``data`` is a path.

    Returns:
        float32 ``(resize_size, resize_size, 3)`` tensor, pixels in ``[0, 255]``.
    """
    encoded = tf.io.read_file(data) if from_path else data
    return resize_central_square(decode_image(encoded), resize_size)


def decode_square(encoded, size, encoding):
    """A square stored by ``python -m keras_alexnet.prepare`` back to float32.

    Args:
        encoded: scalar string: JPEG / PNG bytes, or ``size * size * 3`` raw uint8 bytes.
        size: side of the square.
        encoding: ``"jpeg"``, ``"png"`` or ``"raw"``.

    Returns:
        float32 ``(size, size, 3)`` tensor, pixels in ``[0, 255]``. Raises
        `tf.errors.InvalidArgumentError` for data of another size.
    """
    if encoding == "raw":
        image = tf.reshape(tf.io.decode_raw(encoded, tf.uint8), [size, size, 3])
    else:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        check = tf.debugging.assert_equal(tf.shape(image)[:2], [size, size],
                                          message=f"prepared square is not {size}x{size}")
        with tf.control_dependencies([check]):
            image = tf.identity(image)
    image = tf.cast(image, tf.float32)
    image.set_shape([size, size, 3])
    return image
