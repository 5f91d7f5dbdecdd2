"""A trained or converted AlexNet as a self-contained model for serving and phones.

    python -m keras_alexnet.export RUN --out OUT                       # SavedModel, centre crop
    python -m keras_alexnet.export RUN --out OUT --ten-crop            # the paper's ten crops
    python -m keras_alexnet.export RUN --out model.tflite --format tflite

``RUN`` is anything `keras_alexnet.runs.open_run` opens: a run directory of ``train.py``,
a model directory of ``keras_alexnet.convert`` (``"kind": "converted"``), a ``.keras``
file inside one. The run's whole preprocessing goes into the graph, so the result needs
TensorFlow only (not Keras, not this package):

- **SavedModel** (`export_saved_model`): signature ``serving_default`` taking
  ``images``, a batch of encoded JPEG / PNG / GIF / BMP files (tf.string ``[None]``),
  decoded, shorter side resized and central square taken exactly as
  `keras_alexnet.images.load_image` does, then the centre crop (or the ten crops), the
  run's mean (image or channel), std and channel order
  (`keras_alexnet.preprocessing.Preprocessing.views`, traced), the network in float32
  (`keras_alexnet.runs.serving_model`, whatever precision it was trained in), and the
  softmax (averaged over the ten crops with
  ``ten_crop``). Outputs: ``probabilities`` float32 ``[N, classes]``, ``top5_ids``
  int32 ``[N, k]`` and ``top5_names`` string ``[N, k]`` (the names ``evaluate.py
  --predict`` prints), ``k = min(5, classes)``. Data that is not an image raises
  ``InvalidArgumentError`` from the call; the process serving it goes on.
- **TFLite** (`export_tflite`): input ``image``, uint8 RGB ``[1, S, S, 3]`` with ``S``
  the run's *resize* size: the central square of the photo, shorter side resized to
  ``S`` (what a camera pipeline hands over). Crop, mean, std, channel order, network and
  softmax inside; output ``probabilities`` float32 ``[1, classes]``. TFLite builtin ops
  only (`tflite_ops` lists them): the LRN layers are traced as
  `tf.nn.local_response_normalization`, TFLite's ``LOCAL_RESPONSE_NORMALIZATION``.

Both are traced from the Keras model in a portable form (`portable_tracing`): no
`keras_alexnet.layers.OnDevice` device strings (a run trained on two GPUs serves on a
CPU), and `keras_alexnet.layers.GroupedConv2D` as one convolution per group (the
oneDNN-only grouped kernel is not on every serving machine, nor in TFLite). Each export
writes ``export.json`` beside it (inside the SavedModel directory, or ``OUT.json`` for
TFLite): the source run, the preprocessing, the input and outputs, the class names.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

from keras_alexnet.backends import NeedsTensorFlow, require_tensorflow

FORMATS = ("saved_model", "tflite")
SIGNATURE = "serving_default"
TOP_K = 5
METADATA_FILE = "export.json"


class ExportError(ValueError):
    """A run that cannot be exported as asked (the message names the problem)."""


# ---------------------------------------------------------------------------------------
# Tracing


def _leaf_layers(layer):
    """Every layer inside ``layer`` (models and wrappers opened), itself included."""
    import keras

    yield layer
    inner = getattr(layer, "layer", None)  # keras.layers.Wrapper (OnDevice)
    if isinstance(inner, keras.layers.Layer):
        yield from _leaf_layers(inner)
    for sub in getattr(layer, "layers", ()) if isinstance(layer, keras.Model) else ():
        yield from _leaf_layers(sub)


@contextlib.contextmanager
def portable_tracing(model, lrn_implementation=None):
    """While inside, calls of ``model`` trace to ops that run anywhere: every
    `OnDevice` places nothing, every `GroupedConv2D` is one convolution per group, and
    with ``lrn_implementation`` (``"tf_nn"``, ``"matmul"``) every LRN layer uses it (the
    same function, `keras_alexnet.layers.LocalResponseNormalization`). The model is left
    as it was on exit; functions traced inside keep the portable ops."""
    from keras_alexnet import layers as layers_lib

    saved = []
    for layer in _leaf_layers(model):
        if isinstance(layer, layers_lib.OnDevice) and layer.device is not None:
            saved.append((layer, "device", layer.device))
            layer.device = None
        if lrn_implementation and isinstance(layer, layers_lib.LocalResponseNormalization):
            saved.append((layer, "implementation", layer.implementation))
            layer.implementation = lrn_implementation
    onednn = layers_lib.onednn_enabled
    layers_lib.onednn_enabled = lambda: False  # GroupedConv2D: split per group
    try:
        yield model
    finally:
        layers_lib.onednn_enabled = onednn
        for layer, attr, value in saved:
            setattr(layer, attr, value)


def _crops(ten_crop):
    return "ten" if ten_crop else "center"


def _weights_module(model):
    """A `tf.Module` tracking only the model's weights. Neither the Keras model nor the
    `tf.function` is attached: `tf.saved_model.save` would trace them again, outside
    `portable_tracing` (the Keras model its own call, with its device strings)."""
    import tensorflow as tf

    module = tf.Module()
    module.weights = [w.value for w in model.weights]  # the tf.Variables
    return module


def serving_module(run, *, ten_crop=False):
    """A `tf.Module` whose ``serve`` takes encoded image files and returns the run's
    predictions (see the module docstring), traced in `portable_tracing`.

    Args:
        run: a `keras_alexnet.runs.Run` (or the path of one).
        ten_crop: average the softmax over the paper's ten crops (§4.1).

    Returns:
        ``(module, concrete_function)``: save with ``signatures={"serving_default": fn}``.
    """
    require_tensorflow("SavedModel and TFLite export")
    import tensorflow as tf

    from keras_alexnet import evaluation
    from keras_alexnet.applications import as_run
    from keras_alexnet.images import load_image

    run = as_run(run)
    pre = run.preprocessing
    model = run.model
    crops = _crops(ten_crop)
    crop_shape = [pre.crop_size, pre.crop_size, 3]
    view_spec = tf.TensorSpec([10, *crop_shape] if ten_crop else crop_shape, tf.float32)
    predict = evaluation.make_predict_fn(model, crops)
    names = run.display_names()
    k = min(TOP_K, len(names))

    module = _weights_module(model)
    module.class_names = tf.Variable(names, trainable=False, dtype=tf.string, name="class_names")

    def one_image(encoded):
        return pre.views(load_image(encoded, pre.resize_size, from_path=False), crops)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve(images):
        inputs = tf.map_fn(one_image, images, fn_output_signature=view_spec)
        probs = predict(inputs)
        ids = evaluation.top_k_indices(probs, k)
        return {"probabilities": probs, "top5_ids": ids,
                "top5_names": tf.gather(module.class_names, ids)}

    with portable_tracing(model):
        concrete = serve.get_concrete_function()
    return module, concrete


def tflite_function(run, *, ten_crop=False, lrn_implementation="tf_nn"):
    """The TFLite network as a concrete function: uint8 RGB ``[1, S, S, 3]`` central square
    (``S`` = resize size) -> ``probabilities`` ``[1, classes]``.

    Returns:
        ``(module, concrete_function)`` (the module holds the weights; `tflite_model`
        freezes them into constants).
    """
    require_tensorflow("SavedModel and TFLite export")
    import tensorflow as tf

    from keras_alexnet import evaluation
    from keras_alexnet.applications import as_run

    run = as_run(run)
    pre = run.preprocessing
    model = run.model
    crops = _crops(ten_crop)
    predict = evaluation.make_predict_fn(model, crops)
    size = pre.resize_size

    module = _weights_module(model)

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8, name="image")])
    def classify(image):
        square = tf.cast(image[0], tf.float32)
        return {"probabilities": predict(pre.views(square, crops)[tf.newaxis])}

    with portable_tracing(model, lrn_implementation=lrn_implementation):
        concrete = classify.get_concrete_function()
    return module, concrete


# ---------------------------------------------------------------------------------------
# Writing


def _metadata(run, fmt, ten_crop, inputs, outputs, extra=None):
    from keras_alexnet import run_files
    from keras_alexnet.applications import class_ids

    out = {
        "format": fmt,
        "source": str(run.path or run.model_path),
        "model": str(run.model_path),
        "kind": run.kind,
        "crops": _crops(ten_crop),
        "preprocessing": run.preprocessing.to_json(),
        "inputs": inputs,
        "outputs": outputs,
        "class_ids": class_ids(run),
        "display_names": run.display_names(),
        "versions": run_files.versions(),
    }
    out.update(extra or {})
    return out


def _check_out(out):
    out = Path(out)
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise ExportError(f"{out} exists; choose another --out (or remove it).")
    if not out.parent.is_dir():
        raise ExportError(f"--out: directory {out.parent} does not exist.")
    return out


def export_saved_model(run, out, *, ten_crop=False):
    """Writes the SavedModel of `serving_module` to the directory ``out`` (atomically: a
    temporary sibling, renamed), with ``export.json`` inside.

    Returns:
        ``out`` as a `Path`.
    """
    import tensorflow as tf

    from keras_alexnet import run_files
    from keras_alexnet.applications import as_run

    out = _check_out(out)
    run = as_run(run)
    module, concrete = serving_module(run, ten_crop=ten_crop)
    k = min(TOP_K, len(run.display_names()))
    meta = _metadata(
        run, "saved_model", ten_crop,
        inputs={"images": "tf.string [N]: encoded JPEG / PNG / GIF / BMP files"},
        outputs={"probabilities": f"float32 [N, {len(run.display_names())}]",
                 "top5_ids": f"int32 [N, {k}]", "top5_names": f"string [N, {k}]"},
        extra={"signature": SIGNATURE})
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tf.saved_model.save(module, str(tmp), signatures={SIGNATURE: concrete})
        run_files.atomic_write_text(tmp / METADATA_FILE, json.dumps(meta, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    run_files.fsync_dir(out.parent)
    return out


def tflite_model(run, *, ten_crop=False, allow_select_tf_ops=False):
    """The TFLite flatbuffer of `tflite_function`.

    Args:
        run: a `keras_alexnet.runs.Run` (or the path of one).
        ten_crop: the ten crops inside (a batch of 10 through the network).
        allow_select_tf_ops: fall back to TensorFlow ops (``SELECT_TF_OPS``, which
            needs the Flex delegate on the phone) when the builtins do not suffice.

    Returns:
        ``(flatbuffer bytes, select_tf_ops used)``.

    Raises:
        ExportError: the builtins do not suffice and ``allow_select_tf_ops`` is False.
    """
    import tensorflow as tf

    from keras_alexnet import keras_compat

    _, concrete = tflite_function(run, ten_crop=ten_crop)
    # Weights as constants: FULLY_CONNECTED with constant filters instead of VAR_HANDLE /
    # READ_VARIABLE resource ops and BATCH_MATMUL.
    frozen = keras_compat.freeze_variables(concrete)

    def convert(ops):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
        converter.target_spec.supported_ops = ops
        return converter.convert()

    try:
        return convert([tf.lite.OpsSet.TFLITE_BUILTINS]), False
    except Exception as e:  # tf.lite's ConverterError and friends
        if not allow_select_tf_ops:
            raise ExportError(f"The network does not convert to TFLite builtin ops: {e}. "
                              "--select-tf-ops allows TensorFlow ops (the Flex delegate).") from e
    return convert([tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]), True


def tflite_interpreter(model, allocate=True):
    """An interpreter for a TFLite model (bytes or a path), allocated unless ``allocate``
    is False (before allocation its op list is the model's own, without the default
    XNNPACK delegate's ``DELEGATE`` nodes): LiteRT's
    (``ai_edge_litert``) when installed, else `tf.lite.Interpreter` (deprecated in
    favour of LiteRT, still in TensorFlow 2.21; its warning is silenced)."""
    import warnings

    if isinstance(model, (str, os.PathLike)):
        model = Path(model).read_bytes()
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_content=model)
    else:
        interpreter = Interpreter(model_content=model)
    if allocate:
        interpreter.allocate_tensors()
    return interpreter


def tflite_ops(model):
    """Sorted distinct op names of a TFLite model (bytes or a path), as the interpreter
    reports them before any delegate is applied (``CONV_2D``,
    ``LOCAL_RESPONSE_NORMALIZATION``, ...; TensorFlow ops of ``SELECT_TF_OPS`` appear as
    ``FlexXxx``)."""
    return sorted({op["op_name"] for op in tflite_interpreter(model, allocate=False)._get_ops_details()})


def export_tflite(run, out, *, ten_crop=False, allow_select_tf_ops=False):
    """Writes `tflite_model` to the file ``out`` and its ``export.json`` as ``OUT.json``.

    Returns:
        The metadata dict (with ``ops`` and ``select_tf_ops``).
    """
    from keras_alexnet import run_files
    from keras_alexnet.applications import as_run

    out = _check_out(out)
    run = as_run(run)
    flatbuffer, select = tflite_model(run, ten_crop=ten_crop, allow_select_tf_ops=allow_select_tf_ops)
    size = run.preprocessing.resize_size
    meta = _metadata(
        run, "tflite", ten_crop,
        inputs={"image": f"uint8 [1, {size}, {size}, 3]: RGB central square, shorter side "
                         f"resized to {size}"},
        outputs={"probabilities": f"float32 [1, {len(run.display_names())}]"},
        extra={"ops": tflite_ops(flatbuffer), "select_tf_ops": select})
    tmp = out.with_name(f".tmp-{out.name}")
    try:
        tmp.write_bytes(flatbuffer)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    run_files.atomic_write_text(out.with_name(out.name + ".json"), json.dumps(meta, indent=2) + "\n")
    return meta


# ---------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m keras_alexnet.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory of train.py, model directory of keras_alexnet.convert, a .keras file "
                   "in one, or named published weights (imagenet, bvlc_alexnet, caffenet, torchvision)")
    p.add_argument("--out", required=True, help="SavedModel directory, or the .tflite file")
    p.add_argument("--format", choices=FORMATS, default="saved_model", help="default saved_model")
    p.add_argument("--ten-crop", action="store_true", help="average the softmax over the paper's ten crops")
    p.add_argument("--select-tf-ops", action="store_true",
                   help="tflite: allow TensorFlow ops where builtins do not suffice (needs the Flex delegate)")
    p.add_argument("--unsafe-load", action="store_true",
                   help="allow a model file that runs code when loaded (Lambda layers); only for files you trust")
    args = p.parse_args(argv)
    if not Path(args.run).expanduser().exists():
        from keras_alexnet import pretrained

        try:
            entry = pretrained.named(args.run)
        except (pretrained.WeightsError, ValueError) as e:
            p.error(str(e))
        if entry is None:
            p.error(f"{args.run} does not exist (nor is it named weights: {', '.join(pretrained.names())})")
    if args.select_tf_ops and args.format != "tflite":
        p.error("--select-tf-ops applies to --format tflite only")
    return args


def main(argv=None):
    args = parse_args(argv)
    from keras_alexnet import pretrained, run_files, runs

    try:
        require_tensorflow(f"Export ({args.format})")
        run = runs.open_run(args.run, unsafe=args.unsafe_load)
        out = Path(args.out).expanduser()
        if args.format == "saved_model":
            export_saved_model(run, out, ten_crop=args.ten_crop)
            print(f"Wrote {out} (signature {SIGNATURE}: encoded images -> probabilities, "
                  "top5_ids, top5_names)")
        else:
            meta = export_tflite(run, out, ten_crop=args.ten_crop, allow_select_tf_ops=args.select_tf_ops)
            print(f"Wrote {out}: {meta['inputs']['image']} -> probabilities; ops: "
                  f"{', '.join(meta['ops'])}{' (with SELECT_TF_OPS)' if meta['select_tf_ops'] else ''}")
    except (run_files.RunError, ExportError, pretrained.WeightsError, FileNotFoundError, NeedsTensorFlow) as e:
        print(f"keras_alexnet.export: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from keras_alexnet import startup

    startup.own_process()  # the package is imported: freeze it (keras_alexnet/startup.py)
    sys.exit(main())
