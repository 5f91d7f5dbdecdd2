"""Published ImageNet AlexNets as Keras models: read their weight files, write a model dir.

Three sources (``docs/paper.md``, "Published AlexNets"): Caffe's ``.caffemodel``
(``bvlc_alexnet``, ``bvlc_reference_caffenet``), Guerzhoy's ``bvlc_alexnet.npy`` and
torchvision's ``alexnet-owt-7be5be79.pth`` (``IMAGENET1K_V1``).
`keras_alexnet.weight_readers` reads them without their frameworks and without running
code; `keras_alexnet.weight_files` converts their layouts.

The converted model takes the source network's own input (NHWC): Caffe's 227x227 BGR
0-255 minus the mean, or torchvision's 224x224 normalised RGB, and computes the source's
function: fc8 logits, then a softmax named ``predictions``, as in Caffe's deploy nets
(``prob``). torchvision's net ends in logits: its converted model still ends in the
softmax (so every converted model outputs probabilities); build ``keras.Model(model.input,
model.get_layer("fc8").output)`` for logits.

fc8 may have any number of classes and fc6 / fc7 any width (a fine-tuned net): the model
gets the file's sizes; every other shape must be the variant's. A model directory with
other than 1000 classes needs the class names (``class_names=``, ``--class-names FILE``);
with 1000 classes they are the ImageNet wnids.

The model directory written by `save_model_dir` (``--out DIR``)::

    DIR/model.keras      the Keras model
    DIR/config.json      kind, num_classes, class_names, class_index, preprocessing,
                         source (format, weights, sha256, variant, prototxt, mean_file),
                         versions
    DIR/mean_image.npy   only when preprocessing.mean == "image": float32 (S, S, 3), RGB,
                         [0, 255]

The network input for an RGB crop ``x`` in [0, 255] (taken from the central
``resize_size`` square after resizing the shorter side to ``resize_size``) is
``channel_order((x - mean) / std)``, where ``mean`` is the mean image cropped at the same
window or ``mean_rgb``, and ``std`` is ``std_rgb`` (1 when null).

Command line::

    python -m keras_alexnet.convert --from caffe --weights bvlc_alexnet.caffemodel \\
        --prototxt deploy.prototxt --mean ilsvrc_2012_mean.binaryproto --out bvlc_alexnet
    python -m keras_alexnet.convert --from npy --weights bvlc_alexnet.npy --out alexnet_npy
    python -m keras_alexnet.convert --from torchvision \\
        --weights alexnet-owt-7be5be79.pth --out alexnet_torchvision

Bad files (truncated, another format, another network's shapes, a missing layer) raise
`ConversionError` naming the file, the layer and the shapes, before any weight is set.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


from keras_alexnet import pretrained
from keras_alexnet.model import from_keras_weights
from keras_alexnet.weight_files import (
    CAFFE_VARIANTS,
    caffe_keras_weights,
    npy_keras_weights,
    torchvision_keras_weights,
)
from keras_alexnet.weight_readers import ConversionError, read_mean_binaryproto



def convert_caffe(weights, prototxt=None, variant=None, mean=None):
    """A Caffe ``.caffemodel`` as a Keras AlexNet of its variant.

    Args:
        weights: the ``.caffemodel`` (current or V1 format).
        prototxt: optional deploy ``.prototxt``; it fixes the variant (LRN before or
            after pooling) when the caffemodel holds only its weight layers.
        variant: ``"bvlc_alexnet"`` or ``"caffenet"``, needed only when neither file
            tells; must agree with them otherwise.
        mean: optional ``.binaryproto`` mean image; only checked here (read it with
            `read_mean_binaryproto`; `convert` writes it into the model directory).

    Returns:
        An `AlexNetModel` (``model.variant`` is the variant) taking 227x227 BGR inputs in
        [0, 255] minus the mean, ending in the softmax ``predictions`` (after ``fc8``).
    """
    if mean is not None:
        read_mean_binaryproto(mean)
    variant, keras_weights = caffe_keras_weights(weights, prototxt, variant)
    return from_keras_weights(variant, keras_weights, str(weights))


def convert_npy(weights, variant="bvlc_alexnet"):
    """Guerzhoy's ``bvlc_alexnet.npy`` as a Keras AlexNet (bvlc_alexnet by default).

    The file's fc6 rows are already in the (h, w, c) order of Keras' Flatten
    (ethereon/caffe-tensorflow reorders them; Guerzhoy's ``myalexnet_forward.py``
    flattens NHWC pool5 maps), so no rule but the tower split applies.
    """
    if variant not in CAFFE_VARIANTS:
        raise ConversionError(f"{weights}: variant must be one of {CAFFE_VARIANTS}, got {variant!r}.")
    return from_keras_weights(variant, npy_keras_weights(weights), str(weights))


def convert_torchvision(weights):
    """torchvision's ``alexnet`` state dict (``.pth``) as a Keras AlexNet.

    Returns:
        An `AlexNetModel` (variant ``"torchvision"``) taking 224x224 RGB inputs
        normalised as torchvision's (``x / 255 - mean) / std``), ending in fc8 and the
        softmax ``predictions`` (torchvision's net ends in the logits of fc8).
    """
    return from_keras_weights("torchvision", torchvision_keras_weights(weights), str(weights))


# ---------------------------------------------------------------------------------------
# The model directory.


def save_model_dir(model, out_dir, *, preprocessing, source, mean_image=None,
                   class_names=None, overwrite=False):
    """Writes the model directory (module docstring) with
    `keras_alexnet.run_files.write_model_dir` (atomically: a reader never sees a half-written
    directory), after checking the class names and the mean against the model.

    Args:
        model: the converted Keras model.
        out_dir: the directory to create.
        preprocessing: the ``preprocessing`` dict (`keras_alexnet.pretrained.caffe_preprocessing`, ...).
        source: the ``source`` dict (format, weights, sha256, variant, prototxt,
            mean_file).
        mean_image: float32 (S, S, 3) RGB [0, 255] when ``preprocessing["mean"] ==
            "image"``.
        class_names: the class names in fc8's order; default the 1000 ImageNet wnids
            (required when fc8 has another number of classes).
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``out_dir`` as a `Path`.
    """
    from keras_alexnet.imagenet import imagenet_class_names

    out_dir = Path(out_dir)
    num_classes = int(model.get_layer("fc8").units)
    if class_names is None:
        if num_classes != 1000:
            raise ConversionError(
                f"fc8 has {num_classes} classes: pass their names (class_names=, "
                "--class-names FILE)."
            )
        class_names = list(imagenet_class_names())
    else:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ConversionError(f"{len(class_names)} class names for fc8's {num_classes} classes.")
    if (preprocessing["mean"] == "image") != (mean_image is not None):
        raise ValueError("mean_image is needed exactly when preprocessing['mean'] == 'image'.")
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists (pass overwrite=True / --overwrite).")
    from keras_alexnet import run_files

    old = None
    if out_dir.exists() and overwrite:
        old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
        os.replace(out_dir, old)
    try:
        run_files.write_model_dir(out_dir, model, preprocessing=preprocessing, source=source,
                             mean_image=mean_image, class_names=class_names)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def read_model_dir(model_dir):
    """A model directory as ``(model, config, mean_image or None)``, through
    `keras_alexnet.runs.open_run` (what every tool uses)."""
    from keras_alexnet import runs

    run = runs.open_run(model_dir)
    pre = run.preprocessing
    return run.model, run.config, pre.mean if pre.mean_mode == "image" else None


def convert(source_format, weights, out_dir, *, prototxt=None, variant=None, mean=None,
            class_names=None, overwrite=False):
    """Converts a published weights file and writes its model directory.

    Returns:
        ``(model, out_dir)``.
    """
    if source_format not in pretrained.FORMATS:
        raise ValueError(f"source_format must be one of {pretrained.FORMATS}, got {source_format!r}.")
    mean_image = None
    if source_format == "caffe":
        model = convert_caffe(weights, prototxt=prototxt, variant=variant)
    elif source_format == "npy":
        model = convert_npy(weights, variant=variant or "bvlc_alexnet")
    else:
        if variant not in (None, "torchvision"):
            raise ConversionError(f"{weights}: a torchvision file is variant 'torchvision', not {variant!r}.")
        model = convert_torchvision(weights)
    if source_format in ("caffe", "npy"):
        if mean is not None:
            mean_image = read_mean_binaryproto(mean)
            size = pretrained.caffe_preprocessing()["resize_size"]
            if mean_image.shape[:2] != (size, size):
                raise ConversionError(
                    f"{mean}: mean image {mean_image.shape[:2]}; expected {size}x{size}."
                )
        preprocessing = pretrained.caffe_preprocessing(mean_image is not None)
    else:
        if mean is not None:
            raise ConversionError("--mean applies to Caffe weights only.")
        preprocessing = pretrained.torchvision_preprocessing()
    source = {
        "format": source_format,
        "weights": str(Path(weights).resolve()),
        "sha256": pretrained.file_hash_of(weights),
        "variant": model.variant,
        "prototxt": None if prototxt is None else str(Path(prototxt).resolve()),
        "mean_file": None if mean is None else str(Path(mean).resolve()),
    }
    out = save_model_dir(model, out_dir, preprocessing=preprocessing, source=source,
                         mean_image=mean_image, class_names=class_names, overwrite=overwrite)
    return model, out


# ---------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_alexnet.convert",
        description="Convert a published ImageNet AlexNet (Caffe, Guerzhoy .npy, torchvision) "
        "into a Keras model directory.",
    )
    parser.add_argument("--from", dest="source_format", required=True, choices=pretrained.FORMATS)
    parser.add_argument("--weights", required=True, help=".caffemodel, .npy or .pth")
    parser.add_argument("--prototxt", help="Caffe deploy.prototxt (tells LRN/pool order)")
    parser.add_argument("--variant", choices=CAFFE_VARIANTS + ("torchvision",))
    parser.add_argument("--mean", help="Caffe mean image .binaryproto (ilsvrc_2012_mean)")
    parser.add_argument("--class-names", help="text file, one class name a line (fc8 != 1000)")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    class_names = None
    if args.class_names:
        class_names = [l.strip() for l in Path(args.class_names).read_text().splitlines() if l.strip()]
    try:
        model, out = convert(
            args.source_format, args.weights, args.out, prototxt=args.prototxt,
            variant=args.variant, mean=args.mean, class_names=class_names,
            overwrite=args.overwrite,
        )
    except (ConversionError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({model.variant}, {model.count_params():,} parameters)")
    return 0


if __name__ == "__main__":
    from keras_alexnet import startup

    startup.own_process()  # the package is imported: freeze it (keras_alexnet/startup.py)
    sys.exit(main())
