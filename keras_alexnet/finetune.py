"""Fine-tuning: a network trained elsewhere as the start of a run on other classes.

``python train.py --data-dir DIR --weights SPEC`` trains on DIR's classes from the
weights SPEC names (`keras_alexnet.pretrained`: a run of train.py, a model directory of
``keras_alexnet.convert``, or a ``.keras`` inside one):

- the **source** fixes the network's shape (`SourceWeights.adapt`: variant, crop and
  resize size, fc units, LRN, grouping, input scale) and its input
  (`SourceWeights.preprocessing`: colour order, mean, std), whatever the recipe says;
- every layer but fc8 starts as the source's (`copy_weights`); fc8 is new, sized for
  DIR's classes and initialised as the recipe says;
- `freeze` makes the layers up to one (``--freeze-until``) not trainable.

It is one way to make a run's initial model and preprocessing, nothing more:
`keras_alexnet.training.train` (``weights=``) does everything else as for any run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from keras_alexnet import runs
from keras_alexnet.model import paper_layer
from keras_alexnet.pretrained import file_hash_of
from keras_alexnet.layers import PAPER_LAYERS, GroupedConv2D, LocalResponseNormalization, OnDevice

# The layers --freeze-until may name: each with every layer before it (fc8 is always new).
FREEZABLE = PAPER_LAYERS[:-1]
NEW_LAYER = "fc8"
# The recipe fields the source fixes (its network's shape and input).
ARCHITECTURE_FIELDS = ("variant", "lrn", "lrn_depth_radius", "lrn_bias", "lrn_alpha", "lrn_beta",
                       "fc_units", "input_scale", "crop_size", "resize_size", "mean")


def _leaf(layer):
    return layer.layer if isinstance(layer, OnDevice) else layer


def _architecture(model):
    """The recipe fields (and the grouping) that rebuild ``model``'s shape."""
    names = {layer.name for layer in model.layers}
    if "conv1_a" in names:
        grouping = "towers"
    elif isinstance(_leaf(model.get_layer("conv2")), GroupedConv2D):
        grouping = "grouped"
    else:
        grouping = "none"
    lrns = [_leaf(l) for l in model.layers if isinstance(_leaf(l), LocalResponseNormalization)]
    fields = dict(variant=getattr(model, "variant", "paper") or "paper", lrn=bool(lrns),
                  fc_units=int(model.get_layer("fc6").units), crop_size=int(model.input_shape[1]),
                  input_scale=float(model.get_layer("input_scale").scale) if "input_scale" in names else 1.0)
    if lrns:
        fields.update(lrn_depth_radius=int(lrns[0].depth_radius), lrn_bias=float(lrns[0].bias),
                      lrn_alpha=float(lrns[0].alpha), lrn_beta=float(lrns[0].beta))
    return fields, grouping


@dataclasses.dataclass(eq=False)
class SourceWeights:
    """The weights a fine-tuning run starts from (`open_source`).

    Attributes:
        spec: what ``--weights`` said (a name, URL or path).
        run: the `keras_alexnet.runs.Run` it resolved to; ``run.model`` is the source
            network, ``run.preprocessing`` its input.
    """

    spec: str
    run: object

    @property
    def path(self):
        return self.run.path or self.run.model_path

    @property
    def preprocessing(self):
        return self.run.preprocessing

    def sha256(self):
        """The converted directory's ``source.sha256`` (the published file's), else the
        sha256 of the source's model file."""
        return (self.run.config.get("source") or {}).get("sha256") or file_hash_of(self.run.model_path)

    def config(self):
        """``config.json``'s ``"weights"``: what a resume must find unchanged (the sha256)."""
        return {"spec": str(self.spec), "path": str(self.path), "sha256": self.sha256()}

    def architecture(self):
        """``(recipe fields, grouping)`` of the source: `ARCHITECTURE_FIELDS`."""
        fields, grouping = _architecture(self.run.model)
        pre = self.preprocessing
        fields.update(resize_size=pre.resize_size, mean=pre.mean_mode)
        return fields, grouping

    def adapt(self, recipe, settings):
        """``(recipe, settings)`` with the source's network shape and input."""
        fields, grouping = self.architecture()
        return dataclasses.replace(recipe, **fields), dataclasses.replace(settings, grouping=grouping)

    def conflicts(self, overrides):
        """The explicit recipe values (``{field: value}``, None for not given) that the
        source fixes to another value, in words ([] when none)."""
        fields, _ = self.architecture()
        return [f"{k} {v!r} (the source's is {fields[k]!r})" for k, v in overrides.items()
                if v is not None and k in fields and v != fields[k]]


def open_source(spec):
    """`SourceWeights` of what ``spec`` names (`keras_alexnet.runs.open_run`: a run or model
    directory, a ``.keras`` in one, or named published weights such as ``bvlc_alexnet``).

    Raises:
        keras_alexnet.run_files.RunNotFoundError: ``spec`` names nothing that exists
            (the message names the path).
        keras_alexnet.run_files.RunError: it is not a model train.py can start from.
    """
    from keras_alexnet.run_files import RunError, RunNotFoundError

    path = runs.locate(spec)  # named weights: downloaded and converted once
    if not Path(path).exists():
        raise RunNotFoundError(f"--weights {spec}: {path} does not exist (nor is it named weights: "
                               "python -m keras_alexnet.pretrained list).")
    run = runs.open_run(path)
    missing = [name for name in (*FREEZABLE, NEW_LAYER) if name not in _paper_layers(run.model)]
    if missing:
        raise RunError(f"--weights {spec}: {run.model_path} lacks the layers {missing} "
                       "(a model with its top, include_top=True, is needed).")
    return SourceWeights(str(spec), run)


def _paper_layers(model):
    return {paper_layer(layer.name) for layer in model.layers} - {None}


def copy_weights(source_model, model):
    """Copies every layer with weights but fc8 from ``source_model`` into ``model`` (the
    same architecture, any number of classes).

    Raises:
        ValueError: a layer missing from ``model`` or of another shape.
    """
    for layer in source_model.layers:
        weights = layer.get_weights()
        if not weights or paper_layer(layer.name) == NEW_LAYER:
            continue
        try:
            target = model.get_layer(layer.name)
        except ValueError as e:
            raise ValueError(f"the source's layer {layer.name} is not in the new model") from e
        shapes = [tuple(w.shape) for w in target.get_weights()]
        if shapes != [w.shape for w in weights]:
            raise ValueError(f"{layer.name}: the source's weights {[w.shape for w in weights]} do not "
                             f"fit the new model's {shapes}")
        target.set_weights(weights)


def freeze(model, until):
    """Makes ``until`` (one of `FREEZABLE`) and every layer before it not trainable (both
    towers' ``convN_a`` / ``convN_b``, or the grouped ``convN``). Call before compiling."""
    if until not in FREEZABLE:
        raise ValueError(f"freeze_until must be one of {FREEZABLE}, got {until!r}.")
    frozen = set(PAPER_LAYERS[:PAPER_LAYERS.index(until) + 1])
    for layer in model.layers:
        if paper_layer(layer.name) in frozen and layer.weights:
            layer.trainable = False
    return model
