"""The paper's custom layers: local response normalisation (§3.3) and PCA colour
augmentation (§4.1), plus the small wrappers the two-tower model is built from.

Every layer runs on each Keras 3 backend (TensorFlow, JAX, PyTorch). On TensorFlow they
keep their TensorFlow fast paths (`tf.*` ops: oneDNN's grouped convolution, the LRN with
its hand-written gradient); on the others they are written with `keras.ops`, the LRN's
gradient the same hand-written one (``keras.ops.custom_gradient``). TensorFlow is imported only on the TensorFlow backend (or inside a
`tf.data` pipeline). The layers are registered with Keras under the package name
``keras_alexnet`` so that `.keras` files that contain them load with
`keras.models.load_model` once this package is imported, on any backend.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_alexnet.backends import on_tensorflow
from keras_alexnet.keras_compat import DataLayer, call_has_training_arg, onednn_enabled
from keras_alexnet.variants import PAPER_LRN

# The paper's eight layers with weights (§3.5): every layer name of `keras_alexnet.AlexNet`
# starts with one of these (conv1_a, lrn1, fc6, ...), as do weight files and figures.
PAPER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

# ImageNet RGB PCA from fb.resnet.torch (datasets/imagenet.lua), on pixels scaled to [0, 1].
# Eigenvectors are the columns. Multiplied by 255 these are the Caffe-era values
# [55.46, 4.794, 1.148] used on [0, 255] pixels.
IMAGENET_EIGENVALUES_01 = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32)
IMAGENET_EIGENVECTORS = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ],
    dtype=np.float32,
)
# The same eigenvalues for pixels in [0, 255], the range this package works in.
IMAGENET_EIGENVALUES = IMAGENET_EIGENVALUES_01 * 255.0


def _band_matrix(channels, depth_radius, groups=1):
    """The (channels, channels) 0/1 matrix whose column ``i`` marks the window of channel i.

    ``B[j, i] = 1`` when ``|i - j| <= depth_radius`` and channels i, j are in the same of
    ``groups`` equal groups (block diagonal: a window never reaches into another group).
    """
    idx = np.arange(channels)
    group = idx // (channels // groups)
    band = (np.abs(idx[:, None] - idx[None, :]) <= depth_radius) & (group[:, None] == group[None, :])
    return band.astype(np.float32)


def _neg_pow(d, beta, rsqrt=ops.rsqrt, sqrt=ops.sqrt):
    """``d ** -beta`` without exp/log for the usual exponents (docs/paper.md §3.3: 0.75)."""
    if beta == 0.75:
        r = rsqrt(d)
        return r * sqrt(r)
    if beta == 0.5:
        return rsqrt(d)
    if beta == 1.0:
        return 1.0 / d
    return d ** -beta


def _band_product(t, band, bias=None):
    """``t`` (..., C) times ``band`` (C, C) (+ ``bias`` (C,)), as one 2-D matmul (TensorFlow)."""
    import tensorflow as tf

    shape = tf.shape(t)
    y = tf.linalg.matmul(tf.reshape(t, [-1, band.shape[0]]), band)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    return tf.reshape(y, shape)


def local_response_normalization_ops(x, depth_radius, bias, alpha, beta, groups=1):
    """`local_response_normalization` written with `keras.ops` (every backend): the same
    banded matmul and the same hand-written gradient, through ``keras.ops.custom_gradient``,
    computed in float32.

    The hand-written gradient measured faster than each backend's autodiff of the forward
    formula (bench/bench_backends.py, forward and backward on 2 CPU cores, batch 32: 0.81x
    autodiff's time on JAX at lrn1's and lrn2's shapes; 0.71x and 0.82x on PyTorch).
    """
    dtype = keras.backend.standardize_dtype(x.dtype)
    channels = x.shape[-1]
    if channels is None or channels % groups:
        raise ValueError(f"LRN needs a known channel count divisible by groups={groups}, got {channels}")
    alpha, beta, bias = float(alpha), float(beta), float(bias)
    band = _band_matrix(channels, depth_radius, groups)
    band_fwd = ops.convert_to_tensor(band * alpha)
    band_bwd = ops.convert_to_tensor(band * (-2.0 * alpha * beta))  # B is symmetric

    @ops.custom_gradient
    def _lrn(x32):
        d = ops.matmul(ops.square(x32), band_fwd) + bias
        r = _neg_pow(d, beta)

        def grad(*args, upstream=None):
            # JAX calls grad(upstream); Keras' PyTorch backend grad(*inputs, upstream=upstream).
            if upstream is None:
                (upstream,) = args
            gr = ops.cast(upstream, "float32") * r
            return gr + x32 * ops.matmul(gr * x32 / d, band_bwd)

        return x32 * r, grad

    return ops.cast(_lrn(ops.cast(x, "float32")), dtype)


def local_response_normalization(x, depth_radius, bias, alpha, beta, groups=1):
    """The paper's LRN over the last axis of ``x`` as a banded matmul with its own gradient.

    The sum of squares over a window of ``2 * depth_radius + 1`` channels is the product
    of the squared activations (rows = pixels, columns = channels) with the fixed 0/1
    band matrix ``B`` of `_band_matrix`; with ``groups`` the band is block diagonal, so
    one matmul normalises every channel group on its own. Forward:

        d = k + (x * x) @ (alpha * B),   r = d ** -beta,   y = x * r

    and, since ``B`` is symmetric, the gradient is

        dx = g * r - 2 * alpha * beta * x * ((g * r * x / d) @ B)

    One matmul and a few element-wise passes each way: on CPU this is 2-3x faster than
    `tf.nn.local_response_normalization` and its ``LRNGrad`` kernel (a scalar loop that
    calls ``pow`` per neighbour), and it makes the whole fp32 training step ~9% faster
    (bench/NOTES.md). It keeps ``r`` and ``d`` for the gradient (~0.5 GiB more peak
    memory at batch 128). Computed in float32 for any input dtype; the result has the
    dtype of ``x``. Equal to `tf.nn.local_response_normalization` (per group) to float32
    round-off, values and gradients (tests/test_layers.py).
    """
    import tensorflow as tf

    dtype = x.dtype
    channels = x.shape[-1]
    if channels is None or channels % groups:
        raise ValueError(f"LRN needs a known channel count divisible by groups={groups}, got {channels}")
    alpha, beta, bias = float(alpha), float(beta), float(bias)
    band = _band_matrix(channels, depth_radius, groups)
    band_fwd = tf.constant(band * alpha)
    band_bwd = tf.constant(band * (-2.0 * alpha * beta))
    k = tf.fill([channels], bias)  # added by BiasAdd, which grappler fuses into the MatMul

    @tf.custom_gradient
    def _lrn(x32):
        d = _band_product(tf.square(x32), band_fwd, k)
        r = _neg_pow(d, beta, tf.math.rsqrt, tf.sqrt)

        def grad(g):
            gr = tf.cast(g, tf.float32) * r
            return gr + x32 * _band_product(gr * x32 / d, band_bwd)

        return x32 * r, grad

    y = _lrn(tf.cast(x, tf.float32) if dtype != tf.float32 else x)
    return tf.cast(y, dtype) if dtype != tf.float32 else y


LRN_IMPLEMENTATIONS = ("matmul", "tf_nn")


@keras.saving.register_keras_serializable(package="keras_alexnet")
class LocalResponseNormalization(keras.layers.Layer):
    """Local response normalisation across channels (paper §3.3).

    For the activity ``a[..., i]`` of channel ``i`` out of ``N`` channels:

        b_i = a_i / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a_j**2) ** beta

    with ``n = 2 * depth_radius + 1``; the sum is **not** divided by ``n``. The defaults
    are the paper's values (docs/paper.md §3.3, `keras_alexnet.variants.PAPER_LRN`).

    This is `tf.nn.local_response_normalization(x, depth_radius, bias=k, alpha, beta)`
    exactly. Other frameworks divide alpha by the window size ``n``:

    - PyTorch ``nn.LocalResponseNorm(size=n, alpha=n * alpha, beta, k)`` is this layer.
    - Caffe's ``LRN`` layer (``local_size=n, alpha=A, k=K``) is this layer with
      ``alpha=A / n, bias=K`` (the ``"bvlc_alexnet"`` variant's values in
      `keras_alexnet.variants.VARIANTS`).
    - Krizhevsky's 2012 code (cuda-convnet ``CrossMap`` norm) also divides by ``n``
      (the ``"original"`` preset of `keras_alexnet.recipes`).

    ``groups=g`` splits the channels into ``g`` equal groups and normalises each on its
    own: a channel's window never reaches into a neighbouring group. That is what the
    paper's two GPUs did (each normalised its own maps), and what the single-device
    grouped layout of the model uses to compute exactly the two-tower function.

    Two implementations compute the same function: ``"matmul"`` (the default, the fast
    path: `local_response_normalization` of this module, a banded matmul with a
    hand-written gradient) and ``"tf_nn"`` (the reference:
    `tf.nn.local_response_normalization` on each channel group). They agree to float32
    round-off in values and gradients; the choice changes speed and memory only.

    TensorFlow has no bfloat16 LRN kernel on CPU, so a bfloat16 (or float16) input is
    normalised in float32 and cast back; the result's dtype is the input's.

    Args:
        depth_radius: half-width ``n // 2`` of the window over channels.
        bias: the additive constant ``k``.
        alpha: the scale ``alpha`` (not divided by the window size).
        beta: the exponent ``beta``.
        groups: number of channel groups normalised separately. Default 1.
        implementation: ``"matmul"`` (default, fast) or ``"tf_nn"`` (reference).
        **kwargs: standard `keras.layers.Layer` arguments (e.g. ``name``).

    Call arguments:
        inputs: a channels-last tensor of rank 4, ``(batch, height, width, channels)``.

    Example:
    >>> x = np.ones((1, 4, 4, 8), "float32")
    >>> tuple(LocalResponseNormalization()(x).shape)
    (1, 4, 4, 8)

    Reference:
        Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep
        Convolutional Neural Networks", NIPS 2012, §3.3.
    """

    def __init__(self, depth_radius=PAPER_LRN["depth_radius"], bias=PAPER_LRN["bias"],
                 alpha=PAPER_LRN["alpha"], beta=PAPER_LRN["beta"], groups=1,
                 implementation="matmul", **kwargs):
        super().__init__(**kwargs)
        if implementation not in LRN_IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {LRN_IMPLEMENTATIONS}, got {implementation!r}")
        self.implementation = implementation
        self.groups = int(groups)
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, inputs):
        if not on_tensorflow():
            if self.implementation != "matmul":
                raise ValueError(f"{self.name}: implementation={self.implementation!r} is TensorFlow's own "
                                 f"LRN; on the {keras.backend.backend()} backend use 'matmul' (the same function).")
            return local_response_normalization_ops(
                inputs, self.depth_radius, self.bias, self.alpha, self.beta, self.groups)
        import tensorflow as tf

        x = tf.convert_to_tensor(inputs)
        if self.implementation == "matmul":
            return local_response_normalization(
                x, self.depth_radius, self.bias, self.alpha, self.beta, self.groups
            )
        dtype = x.dtype
        if dtype != tf.float32:
            x = tf.cast(x, tf.float32)
        parts = tf.split(x, self.groups, axis=-1) if self.groups > 1 else [x]
        parts = [
            tf.nn.local_response_normalization(
                part,
                depth_radius=self.depth_radius,
                bias=self.bias,
                alpha=self.alpha,
                beta=self.beta,
            )
            for part in parts
        ]
        y = tf.concat(parts, axis=-1) if self.groups > 1 else parts[0]
        return tf.cast(y, dtype) if dtype != tf.float32 else y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depth_radius": self.depth_radius,
                "bias": self.bias,
                "alpha": self.alpha,
                "beta": self.beta,
                "groups": self.groups,
                "implementation": self.implementation,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_alexnet")
class PCAColorAugmentation(DataLayer):
    """The paper's "fancy PCA" lighting noise (§4.1).

    For each image, draw ``alpha ~ N(0, stddev)`` (a 3-vector) once, and add

        offset = eigenvectors @ (alpha * eigenvalues)

    to every pixel of that image. ``eigenvectors`` holds the eigenvectors of the 3x3 RGB
    covariance of the training pixels as its **columns**; ``eigenvalues`` the matching
    eigenvalues.

    Pixel range: the defaults assume RGB values in ``[0, 255]`` (the range the rest of
    this package works in). They are the widely used ImageNet values of
    fb.resnet.torch (``[0.2175, 0.0188, 0.0045]`` on ``[0, 1]`` pixels) multiplied by 255,
    which keeps the noise the same fraction of the pixel range. For another range pass
    eigenvalues on that range (e.g. the ``[0, 1]`` values for ``[0, 1]`` pixels), or the
    ones written by ``python -m keras_alexnet.stats``.

    Only active with ``training=True``; at inference the layer is the identity (the
    input is returned unchanged). ``stddev=0`` is the identity too.

    Inside a `tf.data` pipeline it runs on TensorFlow whatever Keras' backend (as Keras'
    own preprocessing layers do, through its `DataLayer`); called on a backend's tensors
    it runs on that backend. The draws of ``alpha`` differ between backends (each has its
    own random generator); `offsets_for` gives the offsets of given draws.

    Args:
        eigenvalues: 3 eigenvalues, on the scale of the input pixels. Default: ImageNet
            values for ``[0, 255]`` pixels.
        eigenvectors: 3x3 matrix whose columns are the eigenvectors. Default: ImageNet.
        stddev: standard deviation of ``alpha``. Default 0.1 (the paper).
        seed: optional integer seed for the noise.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: one image ``(height, width, 3)`` or a batch ``(batch, height, width, 3)``.
        training: whether to add noise. Default False.

    Example:
    >>> layer = PCAColorAugmentation(seed=0)
    >>> images = np.full((2, 8, 8, 3), 128.0, "float32")
    >>> bool(np.all(layer(images) == images))  # inference: identity
    True

    Reference:
        Krizhevsky, Sutskever & Hinton, NIPS 2012, §4.1.
    """

    def __init__(self, eigenvalues=None, eigenvectors=None, stddev=0.1, seed=None, **kwargs):
        super().__init__(**kwargs)
        if eigenvalues is None:
            eigenvalues = IMAGENET_EIGENVALUES
        if eigenvectors is None:
            eigenvectors = IMAGENET_EIGENVECTORS
        eigenvalues = np.asarray(eigenvalues, dtype=np.float32).reshape(-1)
        eigenvectors = np.asarray(eigenvectors, dtype=np.float32)
        if eigenvalues.shape != (3,) or eigenvectors.shape != (3, 3):
            raise ValueError(
                "PCAColorAugmentation needs 3 eigenvalues and a 3x3 eigenvector matrix, "
                f"got shapes {eigenvalues.shape} and {eigenvectors.shape}."
            )
        if stddev < 0:
            raise ValueError(f"stddev must be >= 0, got {stddev}.")
        self.eigenvalues = eigenvalues.tolist()
        self.eigenvectors = eigenvectors.tolist()
        self.stddev = float(stddev)
        self.seed = seed
        # A stateless op stream: one `tf.random.Generator` would be a variable, which a
        # `tf.data.Dataset.map` function cannot create; SeedGenerator works in both.
        # (`seed` and `generator` are the names DataLayer's `_get_seed_generator` reads.)
        self.generator = keras.random.SeedGenerator(seed)

    def offsets(self, batch_size):
        """Draws the per-image RGB offsets, shape ``(batch_size, 3)``."""
        alpha = self.backend.random.normal((batch_size, 3), stddev=self.stddev,
                                           seed=self._get_seed_generator(self.backend._backend))
        return self.offsets_for(alpha)

    def offsets_for(self, alpha):
        """The RGB offsets of draws ``alpha`` ``(batch, 3)``: row ``b`` is
        ``eigenvectors @ (alpha_b * eigenvalues)``."""
        b = self.backend
        eigenvalues = b.convert_to_tensor(np.asarray(self.eigenvalues, np.float32))
        eigenvectors_t = b.convert_to_tensor(np.asarray(self.eigenvectors, np.float32).T)
        return b.numpy.matmul(b.cast(alpha, "float32") * eigenvalues, eigenvectors_t)

    def call(self, inputs, training=False):
        if not training or self.stddev == 0.0:
            return inputs
        b = self.backend
        single = len(inputs.shape) == 3
        x = b.numpy.expand_dims(inputs, 0) if single else inputs
        offset = self.offsets(b.shape(x)[0])
        y = x + b.cast(b.numpy.reshape(offset, (-1, 1, 1, 3)), x.dtype)
        return y[0] if single else y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "eigenvalues": self.eigenvalues,
                "eigenvectors": self.eigenvectors,
                "stddev": self.stddev,
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_alexnet")
class OnDevice(keras.layers.Wrapper):
    """Runs a wrapped layer's forward pass under `tf.device(device)`.

    This is how the two towers of the paper's Fig. 2 are placed on their own devices
    (the paper's two GPUs). Keras' functional models re-run each layer's ``call`` when
    the model is called, so a `tf.device` scope around model *construction* would be
    lost; wrapping the call keeps the placement in every trace (fit, predict, export).
    The gradient ops follow the forward ops only when gradients are taken with
    `tf.gradients` in a graph (which colocates each gradient with its op), which is what
    `keras_alexnet.model.AlexNetModel.train_step` does.

    ``device=None`` places nothing: the layer runs wherever the caller runs it. The
    wrapped layer's weights are created on ``device`` as well.

    Args:
        layer: the `keras.layers.Layer` to run.
        device: a device name such as ``"/GPU:1"``, or None.
        **kwargs: standard `keras.layers.Layer` arguments; the name defaults to the
            wrapped layer's, so weights keep the paper's names.
    """

    def __init__(self, layer, device=None, **kwargs):
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.device = device

    def _placed(self):
        """`tf.device(self.device)`, or no placement (no device, or not on TensorFlow: a
        `.keras` file with tower devices loads on every backend, placed by that backend)."""
        if self.device is None or not on_tensorflow():
            return contextlib.nullcontext()
        import tensorflow as tf

        return tf.device(self.device)

    def build(self, input_shape=None):
        # Create the weights on the tower's device too (each of the paper's GPUs held its
        # own tower's weights); the optimizer colocates its slots with them.
        if not self.layer.built:
            with self._placed():
                self.layer.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        kwargs = {"training": training} if call_has_training_arg(self.layer) else {}
        with self._placed():
            return self.layer(inputs, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["device"] = self.device
        return config


@keras.saving.register_keras_serializable(package="keras_alexnet")
class GroupedConv2D(keras.layers.Layer):
    """A grouped 2-D convolution computed by one `tf.nn.conv2d` call (on TensorFlow;
    `keras.ops.conv` with the same kernel on the other backends).

    The kernel has shape ``(kh, kw, in_channels // groups, filters)``; output channels
    ``[g * filters // groups, (g + 1) * filters // groups)`` see only input channels
    ``[g * in // groups, (g + 1) * in // groups)``. With ``groups=2`` this computes the
    same function as two towers of plain `keras.layers.Conv2D` whose kernels are the two
    halves of this kernel along the last axis (`keras_alexnet.model.towers_to_grouped`
    converts the weights). Unlike `keras.layers.Conv2D(groups=...)`, which Keras runs
    through XLA on the TensorFlow backend (about 4x slower to train on CPU),
    this goes to TensorFlow's native (oneDNN) kernels. Its gradient on CPU needs oneDNN
    (the default; ``TF_ENABLE_ONEDNN_OPTS=0`` makes it fail), so the two-tower model is
    the default and this is the ``grouping="grouped"`` option.

    Args:
        filters, kernel_size, strides, padding, activation, kernel_initializer,
        bias_initializer, kernel_regularizer: as in `keras.layers.Conv2D`.
        groups: number of groups. Default 2.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        groups=2,
        activation=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = tuple(np.broadcast_to(kernel_size, (2,)).tolist())
        self.strides = tuple(np.broadcast_to(strides, (2,)).tolist())
        self.padding = padding.lower()
        self.groups = int(groups)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        if self.filters % self.groups:
            raise ValueError(f"filters={filters} is not divisible by groups={groups}.")

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.groups:
            raise ValueError(
                f"{self.name}: {channels} input channels are not divisible by "
                f"groups={self.groups}."
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*self.kernel_size, channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.filters,), initializer=self.bias_initializer
        )

    def call(self, inputs):
        if not on_tensorflow():
            # Other backends group by the kernel's shape (in_channels // kernel.shape[-2]).
            y = ops.conv(inputs, ops.cast(self.kernel, inputs.dtype), strides=self.strides, padding=self.padding)
            return self.activation(y + ops.cast(self.bias, y.dtype))
        import tensorflow as tf

        kernel = tf.cast(self.kernel, inputs.dtype)
        conv = lambda x, k: tf.nn.conv2d(  # noqa: E731
            x, k, strides=self.strides, padding=self.padding.upper()
        )
        if onednn_enabled():
            y = conv(inputs, kernel)
        else:
            # Without oneDNN (TensorFlow turns it off on CPUs without AVX-512, e.g. AVX2
            # EPYCs) the fused Conv2D+BiasAdd+ReLU kernel that TensorFlow's graph
            # optimiser substitutes refuses groups ("Fused conv implementation does not
            # support grouped convolutions"): one convolution per group, concatenated,
            # is the same function.
            y = tf.concat(
                [conv(x, k) for x, k in zip(tf.split(inputs, self.groups, axis=-1),
                                            tf.split(kernel, self.groups, axis=-1))],
                axis=-1,
            )
        y = tf.nn.bias_add(y, tf.cast(self.bias, y.dtype))
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        conv = keras.layers.Conv2D(
            self.filters, self.kernel_size, strides=self.strides, padding=self.padding
        )
        return conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "groups": self.groups,
                "activation": keras.activations.serialize(self.activation),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_alexnet")
class ChannelSlice(keras.layers.Layer):
    """Channels ``[start, stop)`` of a channels-last tensor.

    The tower layout of a Caffe variant uses it to hand each tower its share of an LRN
    that normalised both towers' maps together (Caffe's LRN is not grouped).

    Args:
        start, stop: the channel range.
        **kwargs: standard `keras.layers.Layer` arguments.
    """

    def __init__(self, start, stop, **kwargs):
        super().__init__(**kwargs)
        self.start = int(start)
        self.stop = int(stop)

    def call(self, inputs):
        return inputs[..., self.start:self.stop]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.stop - self.start,)

    def get_config(self):
        config = super().get_config()
        config.update({"start": self.start, "stop": self.stop})
        return config
