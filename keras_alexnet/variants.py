"""The AlexNets this package builds: the paper's and the published ImageNet ones.

Data only (no TensorFlow): `keras_alexnet.model.AlexNet` builds each variant from these
values, and `keras_alexnet.recipes.Recipe` takes the defaults of its model fields from
its variant, so each variant's constants are written here and nowhere else.
"""

# Each variant is a set of defaults for `AlexNet`'s arguments plus two structural facts
# that are not arguments (where the LRN window may reach, and where dropout sits).
# docs/paper.md "Published AlexNets" has the sources.
# - "paper": §3.5. LRN k=2, n=5, alpha=1e-4, beta=0.75 (§3.3; alpha not divided by n),
#   each tower normalising its own maps (§3.2, the paper's GPUs); N(0, 0.01) kernels and
#   biases of 1 in conv2, conv4, conv5, fc6, fc7 (§5); dropout after fc6 and fc7 (§4.2).
# - "bvlc_alexnet": Caffe's models/bvlc_alexnet. conv->relu->norm->pool; `group: 2` in
#   conv2, conv4, conv5; LRN local_size 5, alpha 1e-4, beta 0.75, k 1, and Caffe divides
#   alpha by local_size: alpha 2e-5 here, bias 1. Caffe's LRN layer is not grouped: it
#   normalises across all maps of both towers. Initialisation of its train_val.prototxt:
#   N(0, 0.01) (fc6, fc7: 0.005), biases 0.1 where the paper has 1 ("1 gave flat loss").
# - "caffenet": models/bvlc_reference_caffenet: the same with conv->relu->pool->norm.
# - "torchvision": torchvision.models.alexnet ("one weird trick", Krizhevsky 2014):
#   64/192/384/256/256 kernels, conv1 padded by 2 on 224x224 inputs, no LRN, no groups,
#   Dropout -> fc6 -> ReLU -> Dropout -> fc7 -> ReLU -> fc8. Its AdaptiveAvgPool2d((6, 6))
#   is the identity on the 6x6 pool5 of a 224 input; other sizes are refused with the top.
#   Its initialisation (PyTorch's defaults) is not reproduced: the variant is for
#   converted weights; from scratch it starts like the paper.
VARIANTS = {
    "paper": dict(
        input_shape=(227, 227, 3), conv_filters=(96, 256, 384, 384, 256), conv1_padding=0,
        grouping="towers", lrn=True, lrn_depth_radius=2, lrn_bias=2.0, lrn_alpha=1e-4,
        lrn_beta=0.75, lrn_order="lrn_pool", lrn_across_towers=False, weight_stddev=0.01,
        positive_bias=1.0, dropout_after=("fc6", "fc7"),
    ),
}
VARIANTS["bvlc_alexnet"] = dict(
    VARIANTS["paper"], lrn_bias=1.0, lrn_alpha=2e-5, lrn_across_towers=True,
    weight_stddev={"fc6": 0.005, "fc7": 0.005, "default": 0.01}, positive_bias=0.1,
)
VARIANTS["caffenet"] = dict(VARIANTS["bvlc_alexnet"], lrn_order="pool_lrn")
VARIANTS["torchvision"] = dict(
    VARIANTS["paper"], input_shape=(224, 224, 3), conv_filters=(64, 192, 384, 256, 256),
    conv1_padding=2, grouping="none", lrn=False, dropout_after=("pool5", "fc6"),
)
# pool5 of every variant on its own input size (227, torchvision's 224): 6x6 maps of 256
# kernels, what fc6 reads (torchvision average-pools to exactly this size).
POOL5_HWC = (6, 6, 256)
# The paper's LRN constants, the defaults of `keras_alexnet.layers.LocalResponseNormalization`.
PAPER_LRN = {k: VARIANTS["paper"][f"lrn_{k}"] for k in ("depth_radius", "bias", "alpha", "beta")}


def variant_defaults(variant):
    """The argument defaults `AlexNet` uses for ``variant`` (a copy of `VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {tuple(VARIANTS)}, got {variant!r}.")
    return dict(VARIANTS[variant])
