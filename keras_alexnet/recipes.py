"""Training recipes: the paper's, Krizhevsky's 2012 code's, Caffe's, and a tiny one.

Every hyper-parameter has one home, `Recipe`, whose defaults are the paper's values with
their section beside them; the network's own constants (LRN, initialisation) are those of
its variant, `keras_alexnet.variants.VARIANTS`, unless the recipe sets them. A preset is
data: a mapping from field to ``(value, source)`` applied on top of those defaults.
Command-line flags override a preset field by field.
"""

import copy
import dataclasses
import json
from typing import Optional, Union

from keras_alexnet.variants import variant_defaults

# The model fields that default to the variant's value (None until `Recipe` resolves them).
VARIANT_FIELDS = ("lrn", "lrn_depth_radius", "lrn_bias", "lrn_alpha", "lrn_beta",
                  "weight_stddev", "positive_bias")


@dataclasses.dataclass
class Recipe:
    """One training run's hyper-parameters. Defaults: the paper (NIPS 2012)."""

    # Optimiser (§5).
    batch_size: int = 128  # §5 "batch size of 128 examples"
    learning_rate: float = 0.01  # §5 "initialized at 0.01"
    momentum: float = 0.9  # §5
    weight_decay: float = 0.0005  # §5 v <- 0.9 v - 0.0005 lr w - lr dL/dw (kernels)
    epochs: int = 90  # §5 "roughly 90 cycles"
    # Learning-rate schedule. "plateau" (§5): divide by 10 when the validation error
    # stops improving, at most `max_lr_reductions` times ("reduced three times").
    schedule: str = "plateau"  # "plateau" or "steps"
    lr_factor: float = 0.1  # §5 "divide the learning rate by 10"
    plateau_patience: int = 5  # not in the paper (it decided by eye); a flag
    max_lr_reductions: int = 3  # §5
    lr_steps: tuple = ()  # with schedule="steps": epochs at which lr *= lr_factor
    # Model (§3, §5). `VARIANT_FIELDS` left at None take the variant's values (the
    # paper's: §3.3 LRN, §5 N(0, 0.01) kernels and biases of 1).
    variant: str = "paper"  # which AlexNet (keras_alexnet.variants.VARIANTS)
    lrn: Optional[bool] = None  # §3.3
    lrn_depth_radius: Optional[int] = None  # §3.3 n = 5
    lrn_bias: Optional[float] = None  # §3.3 k
    lrn_alpha: Optional[float] = None  # §3.3 alpha (not divided by n)
    lrn_beta: Optional[float] = None  # §3.3
    weight_stddev: Union[float, dict, None] = None  # §5; a dict: per paper layer
    positive_bias: Optional[float] = None  # §5 biases of conv2, conv4, conv5, fc6, fc7
    dropout: float = 0.5  # §4.2
    fc_units: int = 4096  # §3.5
    input_scale: float = 1.0  # §2 raw pixels minus the mean; 1/64 gives ~unit variance
    # Data (§2, §4.1).
    resize_size: int = 256  # §2 shorter side 256, central 256x256
    crop_size: int = 227  # §4.1 (the paper's "224" cannot give 55x55 conv1 maps)
    mean: str = "image"  # §2 subtract the mean image; "channel" or "none" as options
    pca_stddev: float = 0.1  # §4.1 alpha ~ N(0, 0.1)
    pca_off_epoch: Optional[int] = None  # epoch from which PCA noise stops (2012 code: 67)
    # Fine-tuning (train.py --weights): this layer and all before it keep the source's
    # weights (not trainable); one of conv1 ... fc7, or None (everything trains).
    freeze_until: Optional[str] = None
    # Not hyper-parameters of the network, but of the run.
    seed: int = 0

    def __post_init__(self):
        # The numbers used, not None, so that config.json records them.
        defaults = variant_defaults(self.variant)
        for name in VARIANT_FIELDS:
            if getattr(self, name) is None:
                setattr(self, name, copy.deepcopy(defaults[name]))

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown recipe fields: {sorted(unknown)}")
        values = dict(values)
        # Runs recorded before the field existed were all built as the paper's network.
        values.setdefault("variant", "paper")
        if "lr_steps" in values:
            values["lr_steps"] = tuple(values["lr_steps"])
        return cls(**values)

    def model_kwargs(self):
        """The arguments of `keras_alexnet.AlexNet` this recipe sets."""
        return dict(
            variant=self.variant,
            lrn=self.lrn,
            lrn_depth_radius=self.lrn_depth_radius,
            lrn_bias=self.lrn_bias,
            lrn_alpha=self.lrn_alpha,
            lrn_beta=self.lrn_beta,
            weight_stddev=self.weight_stddev,
            positive_bias=self.positive_bias,
            dropout=self.dropout,
            fc_units=self.fc_units,
            input_scale=self.input_scale,
            input_shape=(self.crop_size, self.crop_size, 3),
            seed=self.seed,
        )


_CONV345_003 = {"conv3": 0.03, "conv4": 0.03, "conv5": 0.03, "default": 0.01}

PRESETS = {
    # The paper's text: the defaults of `Recipe`.
    "paper": {},
    # Krizhevsky's own 2012 code (computerhistory/AlexNet-Source-Code, layers-145.cfg and
    # layer-params-145.cfg); docs/paper.md "Krizhevsky's 2012 code".
    "original": {
        "lrn_alpha": (2e-5, "cuda-convnet CrossMap norm divides alpha=1e-4 by size 5"),
        "weight_stddev": (_CONV345_003, "layers-145.cfg: initW=0.03 in conv3, conv4, conv5"),
        "schedule": ("steps", "layer-params-145.cfg training log"),
        "lr_steps": ((25, 51, 79), "lr 0.01 -> 1e-3 at epoch 25, 1e-4 at 51, 1e-5 at 79"),
        "epochs": (91, "the log stops at epoch 91 (40.66% / 18.21% top-1 / top-5 error)"),
        "pca_off_epoch": (67, "colour noise off from epoch 67"),
    },
    # Caffe's bvlc_alexnet (models/bvlc_alexnet/train_val.prototxt, solver.prototxt).
    "caffe": {
        "variant": ("bvlc_alexnet", "deploy.prototxt: LRN k=1, alpha 1e-4/5 across both towers; "
                                    "train_val.prototxt: bias_filler 0.1, gaussian std 0.005 in fc6, fc7"),
        "pca_stddev": (0.0, "no PCA lighting noise"),
        "batch_size": (256, "train_val.prototxt batch_size 256"),
        "schedule": ("steps", "solver.prototxt lr_policy 'step'"),
        "lr_steps": ((20, 40, 60, 80), "stepsize 100,000 iterations = 20 epochs at batch 256"),
        "epochs": (90, "max_iter 450,000 iterations = 90 epochs"),
    },
    # The paper's recipe at toy size: the built-in default of train.py and the tests, on
    # the synthetic dataset of 8 shape classes (keras_alexnet/synthetic.py). Still the
    # paper's pipeline: mean image, random crops and flips, PCA noise, LRN, dropout, SGD
    # with momentum and weight decay, the plateau schedule.
    #
    # Why these values, measured with train.py in float32 on 2 shared cores (the
    # alternatives in runs of 6 epochs unless stated):
    # - Enough SGD steps: batch 16 over 3,200 images is 200 steps an epoch, 2,400 in all.
    #   At batch 32 over 1,200 images (38 steps an epoch, 456 in all) a run stopped while
    #   still underfitting: training error 54% in epoch 12 (with dropout and augmentation)
    #   above the validation error, 39%, both still falling.
    # - Learning rate 0.01, the paper's: 0.005 learned no faster (69% best after 6 epochs
    #   either way).
    # - Dropout 0.25: 0.5 on 512-unit fc layers slowed learning most (47% without dropout
    #   and weight decay against 69%; the decay shrinks the weights by lr * wd = 2.5e-6 a
    #   step, 0.1% over the run, so the difference is dropout's; the logged loss includes
    #   the decay term).
    # - Crop 67 of 76: a 99 px crop cost twice the time per image (54 vs 113 img/s) and
    #   learned no more per step (after 300 steps: 54% at crop 99, 57% at crop 67).
    # - The images (keras_alexnet/synthetic.py) are calm backgrounds with shapes that stand
    #   out, drawn at the resize size: over colourful 4x4 clutter the errors were shape
    #   confusions (disc/square, triangle/star/square, ring/cross) where a shape's colour
    #   matched the background.
    # - fc8 from N(0, 0.01), the paper's value: a He-initialised fc8 starts confident and
    #   wrong (mean top probability 0.36-0.42 before training, chance is 1/8), N(0, 0.01)
    #   at 0.16-0.17.
    # With the values below, float32: best / final validation top-1
    # error, seed 0 (four runs; CPU training is not bit-deterministic) 1.25% / 1.25%,
    # 3.25% / 7.50%, 3.25% / 6.50%, 4.75% / 10.50%; seed 1 2.25% / 2.25%; seed 2 2.50% / 5.00% (chance
    # 87.5%); 32-44% after 3 epochs. At lr 0.01 the error bounces (6-25% in epochs 7-11); the
    # plateau cut (after epoch 10 or 11, or none within the 12 epochs) settles it. Time: the README's quick start.
    # With the paper's fixed N(0, 0.01) everywhere and biases of 1 the loss stays flat at
    # chance (the 0.01 is matched to the full-size layer widths; at toy widths the signal
    # dies by fc7), so the hidden layers use He init on unit-scale inputs.
    "tiny": {
        "learning_rate": (0.01, "the paper's 0.01 (0.005 learned no faster); the plateau cut settles its bounce"),
        "resize_size": (76, "toy size: the synthetic images are drawn at 76 px"),
        "crop_size": (67, "toy size: 67 -> 15x15 conv1 maps, 1x1 pool5; half the cost of 99 per image"),
        "fc_units": (512, "toy size"),
        "batch_size": (16, "toy size: 200 steps per epoch; 22% vs 29% error after 6 epochs at batch 32, "
                           "epochs of about the same time"),
        "epochs": (12, "2,400 steps: the plateau cut comes after epoch 10-11"),
        "plateau_patience": (2, "a short run: lr / 10 after 2 epochs without a new best"),
        "dropout": (0.25, "toy size: 0.5 slowed learning most (6 epochs: 69% error, 47% without dropout and "
                          "decay); 0.25 keeps dropout in the pipeline"),
        "input_scale": (1 / 64, "mean-subtracted pixels /64: about unit variance"),
        "weight_stddev": ({"default": "he", "fc8": 0.01},
                          "N(0, 2/fan_in) (He et al. 2015), the paper's 0.01 stalls at toy size; fc8 the paper's 0.01"),
        "positive_bias": (0.0, "zero biases with He init"),
    },
    # Fine-tuning a trained network on new classes (train.py --weights, which picks this
    # preset unless --preset is given). The network's shape and input come from the
    # weights, not from here. Two published recipes:
    # - Caffe's examples/finetune_flickr_style (solver.prototxt): every layer trains,
    #   base_lr 0.001 with the new fc8 at 10x (lr_mult), step policy, stepsize 20,000 of
    #   100,000 iterations at batch 50;
    # - kratzert/finetune_alexnet_with_tensorflow: only fc7 and fc8 train, lr 0.01, 10
    #   epochs.
    # We train every layer by default, as Caffe does, so Caffe's rate: 0.01 on pretrained
    # conv layers undoes much of what they learned (the reason Caffe's example lowers it);
    # kratzert's 0.01 is for fc7/fc8 alone (--freeze-until fc6 --lr 0.01 is that recipe).
    # One rate for all layers here, no 10x fc8: in the toy fine-tuning test
    # (tests/test_finetune.py) at a base rate of 3e-4, fc8 at 10x ended the first epoch at
    # 30.5-57% error against 23.5-30% without (four seeds each). Fewer epochs than from scratch, with the
    # plateau cut; the rest (momentum, decay, batch, dropout, PCA noise) the paper's.
    "finetune": {
        "learning_rate": (0.001, "Caffe's finetune_flickr_style base_lr (every layer trains)"),
        "epochs": (20, "fine-tuning converges in a fraction of a from-scratch run (kratzert: 10 epochs; "
                       "Caffe: 100,000 iterations at batch 50)"),
        "plateau_patience": (3, "a short run: lr / 10 after 3 epochs without a new best"),
    },
}


def preset(name):
    """The `Recipe` of a preset name (see `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return Recipe.from_dict({k: v for k, (v, _) in PRESETS[name].items()})


def preset_sources(name):
    """Where each non-paper value of a preset comes from: ``{field: source}``."""
    return {k: source for k, (_, source) in PRESETS[name].items()}


def resolve(name, overrides=None):
    """A preset with field overrides applied (None values are ignored). Fields the
    preset and the overrides leave unset take the defaults of `Recipe` (the variant's
    for `VARIANT_FIELDS`)."""
    preset(name)  # the name checked
    values = {k: v for k, (v, _) in PRESETS[name].items()}
    names = {f.name for f in dataclasses.fields(Recipe)}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in names:
            raise ValueError(f"unknown recipe field {key!r}")
        values[key] = value
    return Recipe.from_dict(values)


def to_json(recipe):
    return json.dumps(recipe.to_dict(), indent=2, sort_keys=True)
