"""Run and model directories for the export and applications tests, at toy size.

- `write_converted_dir`: a model directory as ``keras_alexnet.convert`` writes it, with
  `keras_alexnet.run_files.write_model_dir`, from a tiny random AlexNet: the published networks' preprocessing variants (Caffe's BGR and
  channel mean; torchvision's RGB, mean and std).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CROP, RESIZE = 67, 76
# Caffe's bvlc_alexnet: BGR input, the channel mean subtracted, no std.
CAFFE_STYLE = {"crop_size": CROP, "resize_size": RESIZE, "mean": "channel",
               "mean_rgb": [123.0, 117.0, 104.0], "std_rgb": None, "channel_order": "BGR",
               "provenance": "test"}
# torchvision's: RGB, mean and std in pixel units.
TORCH_STYLE = {"crop_size": CROP, "resize_size": RESIZE, "mean": "channel",
               "mean_rgb": [123.675, 116.28, 103.53], "std_rgb": [58.395, 57.12, 57.375],
               "channel_order": "RGB", "provenance": "test"}


def write_converted_dir(path, preprocessing, *, classes=1000, class_names=None,
                        grouping="grouped", devices=None, seed=0, mean_image=None):
    """A converted-style model directory of a tiny AlexNet (random weights, He init
    and a 1/64 input scale, so that its softmax is far from uniform and its top-5 is
    stable to float round-off). 1000 classes: the ImageNet wnids."""
    import keras_alexnet
    from keras_alexnet import run_files

    model = keras_alexnet.AlexNet(
        input_shape=(preprocessing["crop_size"], preprocessing["crop_size"], 3),
        classes=classes, fc_units=16, grouping=grouping, devices=devices,
        weight_stddev="he", input_scale=1 / 64, lrn_alpha=2e-5, lrn_bias=1.0, seed=seed)
    return run_files.write_model_dir(path, model, preprocessing=preprocessing,
                                     source={"format": "test", "variant": grouping},
                                     class_names=class_names, mean_image=mean_image)
