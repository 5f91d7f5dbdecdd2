"""A quiet console: TensorFlow's start-up noise hidden, real errors kept.

TensorFlow 2.21 prints a dozen lines at import and device start-up on a CPU-only machine
(``Could not find cuda drivers``, ``E0000 ... failed call to cuInit``, ``oneDNN custom
operations are on``, ``All log messages before absl::InitializeLog() ...``). Many of them
are written by C++ code before absl logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL=3``
does not hide them (seen with TF 2.21). `quiet_tensorflow` therefore points file
descriptor 2 at a temporary file while TensorFlow is imported and lists its devices, then
restores it and replays every captured line that is not known noise. If the import
raises, everything captured is replayed and the exception propagates, so a real error
(a missing library, a broken install) still reaches the user.

It must run before anything imports TensorFlow, and every entry point of the project
(``train.py``, ``evaluate.py``, ``python -m keras_alexnet.stats`` / ``.visualize``, the
notebooks) imports TensorFlow through the package: ``keras_alexnet/__init__.py`` calls it
first thing. (With ``python -m keras_alexnet.X`` Python runs the package's ``__init__``
before ``X``, so a call in ``X``'s ``main()`` would come too late; a lazy ``__init__``
would no longer register the custom layers that `keras.models.load_model` needs.) On JAX
and PyTorch the package does not import TensorFlow, but its input pipeline does, later:
there ``__init__`` calls `quiet_tensorflow_when_imported`, which hides the same noise
whenever TensorFlow's first import comes.

It hides nothing when ``TF_CPP_MIN_LOG_LEVEL`` is set by the user (their choice wins) or
when ``KERAS_ALEXNET_VERBOSE`` is set to anything but ``0`` or empty (``train.py
--verbose`` and ``evaluate.py --verbose`` set it, before importing the package). Otherwise it sets
``TF_CPP_MIN_LOG_LEVEL=2`` for the rest of the process (TensorFlow's info and warning
logs hidden, errors kept). It does not set ``TF_ENABLE_ONEDNN_OPTS``: oneDNN
stays on (`GroupedConv2D`'s gradient on CPU needs it: `keras_compat.onednn_enabled`); only its
message is dropped.
"""

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

VERBOSE_ENV = "KERAS_ALEXNET_VERBOSE"
# Set by `quiet_tensorflow` next to its own TF_CPP_MIN_LOG_LEVEL, so that a child
# process (which inherits both) still knows the level was not the user's choice.
_OWN_LEVEL_MARK = "KERAS_ALEXNET_DEFAULT_TF_LOG_LEVEL"

# Lines TensorFlow / XLA print at start-up on machines without a GPU (or without
# TensorRT); a captured line matching one of these is dropped.
NOISE = (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"cudart_stub\.cc",
    r"Could not find cuda drivers",
    r"cuda_platform\.cc",
    r"failed call to cuInit",
    r"cuda_diagnostics\.cc",
    r"cuda_executor\.cc",
    r"cuda_dnn\.cc|cuda_fft\.cc|cuda_blas\.cc",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"TF-TRT Warning",
    r"oneDNN custom operations are on",
    r"TF_ENABLE_ONEDNN_OPTS",
    r"cpu_feature_guard\.cc",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* rebuild TensorFlow",
    r"^\s*$",
)
_NOISE_RE = re.compile("|".join(f"(?:{p})" for p in NOISE))


def is_noise(line):
    """Whether ``line`` is one of TensorFlow's known start-up messages (see `NOISE`)."""
    return bool(_NOISE_RE.search(line))


def user_chose_log_level(environ=None):
    """Whether ``TF_CPP_MIN_LOG_LEVEL`` was set by the user (not by this module)."""
    environ = os.environ if environ is None else environ
    level = environ.get("TF_CPP_MIN_LOG_LEVEL")
    if level is None or _OWN_LEVEL_MARK in environ:
        return False
    # JAX's import sets a default of 1 (jax/__init__.py, os.environ.setdefault): not a choice.
    return not (level == "1" and "jax" in sys.modules)


def verbose_requested(environ=None):
    """Whether ``KERAS_ALEXNET_VERBOSE`` asks for TensorFlow's logs (``--verbose``)."""
    environ = os.environ if environ is None else environ
    return environ.get(VERBOSE_ENV, "") not in ("", "0")


def keras_backend_name():
    """The backend Keras will choose, read as Keras reads it (``KERAS_BACKEND``, then
    ``$KERAS_HOME/keras.json`` or ``~/.keras/keras.json``, else TensorFlow) without
    importing Keras, which on TensorFlow imports TensorFlow."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        import json

        with open(os.path.join(home, "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def quiet_tensorflow(verbose=None):
    """Imports TensorFlow with its start-up noise hidden and returns the module.

    Args:
        verbose: show everything TensorFlow prints (as does a ``TF_CPP_MIN_LOG_LEVEL``
            set by the user); None: `verbose_requested`.

    Returns:
        The `tensorflow` module. If it was imported before, nothing is hidden (too late)
        and it is returned as is.

    Raises:
        Whatever ``import tensorflow`` raises, after replaying what it printed.
    """
    if verbose is None:
        verbose = verbose_requested()
    if "tensorflow" in sys.modules or verbose or user_chose_log_level():
        import tensorflow as tf

        return tf
    with _noise_hidden():
        import tensorflow as tf

        tf.config.list_physical_devices()  # CUDA start-up logs here (cuInit)
    return tf


@contextlib.contextmanager
def _noise_hidden():
    """File descriptor 2 captured while inside; what is not `is_noise` replayed after
    (everything, if the body raised)."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    os.environ[_OWN_LEVEL_MARK] = "1"
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 (e.g. a detached process)
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            lines = text.splitlines(keepends=True)
            kept = lines if failed else [line for line in lines if not is_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An import hook: TensorFlow's first import, by whatever module, runs inside
    `_noise_hidden`. It finds TensorFlow with the other finders and wraps the loader; the
    import hands the module its own loader back and removes the hook. (Libraries ask
    `importlib.util.find_spec("tensorflow")` only to learn whether it is installed: seen
    with PyTorch's imports; the hook stays for the real import.)"""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        self.loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def __init__(self):
        self.show_all = verbose_requested() or user_chose_log_level()

    def exec_module(self, module):
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        module.__spec__.loader = module.__loader__ = self.loader
        if self.show_all:
            self.loader.exec_module(module)
            return
        with _noise_hidden():
            self.loader.exec_module(module)
            module.config.list_physical_devices()


def quiet_tensorflow_when_imported():
    """Hides TensorFlow's start-up noise (as `quiet_tensorflow`) whenever it is first
    imported, without importing it now. Nothing happens if it was imported already."""
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())

