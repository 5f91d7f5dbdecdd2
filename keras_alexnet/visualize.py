"""The figures of a run or a converted model, as PNGs: ``python -m keras_alexnet.visualize``.

A run directory written by ``train.py``, or a model directory of
``keras_alexnet.convert``::

    python -m keras_alexnet.visualize --run runs/RUN --out runs/RUN/figures \\
        --images PHOTOS/val --neighbours-from PHOTOS/train --max-base 500

writes `FIGURES` (those it has the inputs for), drawn by `keras_alexnet.figures`.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from keras_alexnet.activations import fc7_features
from keras_alexnet.analysis import nearest_neighbours, spread
from keras_alexnet.figures import (
    CURVES_FILE,
    plot_activations,
    plot_colour_specificity,
    plot_conv1_filters,
    plot_neighbours,
    plot_predictions,
    plot_training_curves,
    save_figure,
)

# What `main` writes, in order (the README shows these).
FIGURES = (
    "conv1_filters.png",
    "conv1_filters_change.png",
    "colour_specificity.png",
    CURVES_FILE,
    "activations.png",
    "predictions.png",
    "neighbours.png",
)


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m keras_alexnet.visualize",
        description="Figures of a training run or a converted model: conv1 kernels (Fig. 3) "
        "and what training changed in them, colour specificity per tower, activations, "
        "top-5 predictions and fc7 nearest neighbours (Fig. 4), training curves.",
    )
    p.add_argument("--run", required=True, help="run directory of train.py, a model directory of "
                   "keras_alexnet.convert, or named published weights (imagenet, bvlc_alexnet, ...)")
    p.add_argument("--out", help="output directory (default: RUN/figures)")
    p.add_argument("--images", nargs="+", default=[], help="image files or directories (query / test images)")
    p.add_argument("--neighbours-from", help="directory of base (training) images for the fc7 nearest neighbours")
    p.add_argument("--max-base", type=int, default=300, help="at most this many base images, evenly spread (default 300)")
    p.add_argument("--max-images", type=int, default=8, help="images in predictions.png (default 8)")
    p.add_argument("--max-queries", type=int, default=5, help="query rows in neighbours.png (default 5, as Fig. 4)")
    p.add_argument("--k", type=int, default=6, help="neighbours per query (default 6, as Fig. 4)")
    p.add_argument("--max-maps", type=int, default=16, help="feature maps per tower and layer (default 16)")
    p.add_argument("--batch-size", type=int, default=32)
    return p


def main(argv=None):
    """The command; returns the list of files written. Raises
    `keras_alexnet.run_files.RunError` (or a `keras_alexnet.sources.DatasetError`) naming the
    path when the run, its model or an image path is missing."""
    from keras_alexnet import runs, sources

    args = _parser().parse_args(argv)
    run = runs.open_run(args.run)
    out = Path(args.out) if args.out else run.figures_dir()
    images = sources.list_images(args.images) if args.images else []
    base_files = sources.list_images(args.neighbours_from) if args.neighbours_from else []
    out.mkdir(parents=True, exist_ok=True)
    model = run.model
    print(f"model: {run.model_path}")
    written = []

    def wrote(fig, name):
        written.append(save_figure(fig, out / name))
        print(f"wrote {out / name}")

    wrote(plot_conv1_filters(model), "conv1_filters.png")
    if run.recipe is not None:  # the recipe's seed rebuilds the weights before training
        wrote(plot_conv1_filters(model, initial=run.initial_model()), "conv1_filters_change.png")
    else:
        print(f"{run.path or run.model_path} was not trained by train.py (no recipe, no initial "
              "weights): skipping conv1_filters_change.png")
    wrote(plot_colour_specificity(model), "colour_specificity.png")

    metrics = run.metrics()
    if metrics is not None:
        wrote(plot_training_curves(metrics, title=f"Training curves: {run.path}"), CURVES_FILE)
    else:
        print(f"no metrics.csv in {run.path or run.model_path.parent}: skipping {CURVES_FILE}")

    if images:
        pre = run.preprocessing
        print(f"preprocessing: {pre.source}; shorter side {pre.resize_size}, centre crop "
              f"{pre.crop_size}, mean {pre.mean_mode}, {pre.channel_order}")
        names = run.display_names()
        shown = pre.load(images[: max(args.max_images, args.max_queries)])

        wrote(plot_activations(model, shown[0], max_maps=args.max_maps, preprocess=pre.network_input),
              "activations.png")
        labels = [names[run.label(p)] if run.label(p) >= 0 else None for p in images[: args.max_images]]
        wrote(
            plot_predictions(model, shown[: args.max_images], names,
                             labels=labels if any(labels) else None, preprocess=pre.network_input),
            "predictions.png",
        )
        if base_files:
            base_files = spread(base_files, args.max_base)
            k = min(args.k, len(base_files))
            queries = shown[: args.max_queries]
            query_feats = fc7_features(model, queries, args.batch_size, pre.network_input)
            feats, thumbs = [], []
            for i in range(0, len(base_files), args.batch_size):
                batch = pre.load(base_files[i : i + args.batch_size])
                feats.append(fc7_features(model, batch, args.batch_size, pre.network_input))
                thumbs.append(batch.round().astype(np.uint8))
            idx, dist = nearest_neighbours(query_feats, np.concatenate(feats), k, return_distances=True)
            wrote(plot_neighbours(queries, np.concatenate(thumbs), idx, distances=dist), "neighbours.png")
            print(f"neighbours among {len(base_files)} images of {args.neighbours_from}")
        elif args.neighbours_from:
            print(f"no images under {args.neighbours_from}: skipping neighbours.png")
        else:
            print("no --neighbours-from: skipping neighbours.png")
    else:
        print("no --images: skipping activations.png, predictions.png, neighbours.png")
    return written


if __name__ == "__main__":
    from keras_alexnet import pretrained, run_files, sources, startup

    startup.own_process()  # the package is imported: freeze it (keras_alexnet/startup.py)
    try:
        main()
    except (run_files.RunError, sources.DatasetError, pretrained.WeightsError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
