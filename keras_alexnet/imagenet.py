"""ImageNet's 1000 classes: their wnids in class-index order, their names, how to print them.

The one home of the ILSVRC-2012 class lists; every other module asks here.

- The wnids in the standard class-index order come from the files that ship inside
  tensorflow-datasets (``datasets/imagenet2012/labels.txt`` and the 50,000 validation
  labels ``validation_labels.txt``): `imagenet_class_names`, `imagenet_validation_wnids`.
- The human-readable names ship with this package in ``imagenet_synset_words.txt``: an
  unchanged copy of Caffe's ``data/ilsvrc12/synset_words.txt`` (BSD 2-Clause, Caffe /
  BVLC; the names are WordNet 3.0 lemmas, WordNet 3.0 license, Princeton University),
  with provenance, checksum and both license texts in its header: `imagenet_synset_words`,
  `imagenet_class_names_human` (which checks that its order is TFDS's).
- `class_display_names`: what to print for a model's outputs, wnids as
  ``"short name (wnid)"``, other class names (a compact run's folders) as they are.

Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

WNID_PATTERN = re.compile(r"^n\d{8}$")  # an ImageNet (WordNet) class id: n + 8 digits
SYNSET_WORDS_FILE = Path(__file__).with_name("imagenet_synset_words.txt")
NUM_CLASSES = 1000
_TFDS_LABELS = ("datasets", "imagenet2012", "labels.txt")
_TFDS_VALIDATION_LABELS = ("datasets", "imagenet2012", "validation_labels.txt")
_CACHE = {}


class ClassNamesError(ValueError):
    """Class names that do not fit a model's outputs or disagree with the standard order."""


def _tfds_file(parts):
    """Path of a data file inside the installed tensorflow_datasets package.

    Found through the import system without importing the (slow to import) package.
    """
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "tensorflow-datasets is not installed; it provides the ImageNet label files "
            f"{'/'.join(parts)} (pip install tensorflow-datasets)."
        )
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        return tuple(line.strip() for line in f.read().splitlines() if line.strip())


def imagenet_class_names():
    """The 1000 ILSVRC-2012 wnids in the standard class-index order.

    Returns:
        A tuple of 1000 strings (``"n01440764"``, ...); class ``i`` is element ``i``.
    """
    if "labels" not in _CACHE:
        _CACHE["labels"] = _read_lines(_tfds_file(_TFDS_LABELS))
    return _CACHE["labels"]


def imagenet_validation_wnids():
    """The wnids of the 50,000 ILSVRC-2012 validation images.

    Returns:
        A tuple of 50,000 strings; element ``k - 1`` is the class of
        ``ILSVRC2012_val_{k:08d}.JPEG``.
    """
    if "validation" not in _CACHE:
        _CACHE["validation"] = _read_lines(_tfds_file(_TFDS_VALIDATION_LABELS))
    return _CACHE["validation"]


def imagenet_synset_words():
    """The shipped ``imagenet_synset_words.txt``: wnid -> comma-separated names.

    Returns:
        A dict of 1000 entries in the file's (class-index) order, e.g.
        ``{"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius
        auratus", ...}``. Source and license: the module docstring.
    """
    if "words" not in _CACHE:
        words = {}
        with open(SYNSET_WORDS_FILE, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                wnid, _, names = line.partition(" ")
                words[wnid] = names.strip()
        _CACHE["words"] = words
    return _CACHE["words"]


def imagenet_class_names_human(short=False):
    """Human-readable names of the 1000 ImageNet classes, in class-index order.

    Element ``i`` names class ``i`` of `imagenet_class_names`: index 0 is ``"tench,
    Tinca tinca"`` (n01440764), index 1 ``"goldfish, Carassius auratus"`` (n01443537).

    Args:
        short: only the first name of each synset (``"tench"``). Some first names
            repeat (two classes are called ``"crane"``: the bird and the machine), so
            show the wnid beside a short name.

    Returns:
        A tuple of 1000 strings.

    Raises:
        ClassNamesError: the shipped file and tensorflow-datasets disagree on the order.
    """
    words = imagenet_synset_words()
    wnids = imagenet_class_names()
    if list(words) != list(wnids):
        raise ClassNamesError(
            f"{SYNSET_WORDS_FILE} does not list the 1000 ImageNet wnids in the order of "
            "tensorflow-datasets' imagenet2012/labels.txt; the class names would be wrong."
        )
    names = tuple(words[w] for w in wnids)
    return tuple(short_name(n) for n in names) if short else names


def short_name(names):
    """The first of a synset's comma-separated names (``"tench, Tinca tinca"`` -> ``"tench"``)."""
    return names.split(",")[0].strip()


def class_display_names(class_names, num_classes):
    """Names to print for a model's ``num_classes`` outputs.

    ImageNet wnids become ``"short name (wnid)"`` (``"tench (n01440764)"``); other
    names (a compact run's folder names: ``"disc"``, ``"square"``, ...) stay as they
    are. Without ``class_names``, a 1000-class model is taken to speak the ImageNet
    order and any other is named by index (``"class 3"``).

    Args:
        class_names: the run's class names (or None).
        num_classes: the model's number of outputs.

    Returns:
        A list of ``num_classes`` strings.

    Raises:
        ClassNamesError: ``class_names`` has another length than ``num_classes``.
    """
    if class_names is None:
        if num_classes != NUM_CLASSES:
            return [f"class {i}" for i in range(num_classes)]
        class_names = imagenet_class_names()
    if len(class_names) != num_classes:
        raise ClassNamesError(
            f"{len(class_names)} class names for a model with {num_classes} outputs."
        )
    words = imagenet_synset_words()
    return [f"{short_name(words[n])} ({n})" if n in words else str(n) for n in class_names]
