"""Published trained AlexNets by name (``AlexNet(weights="imagenet")``): the table and the cache.

`WEIGHTS` is the table of named weights (data only: where each file is published, the hash
its publisher states, its network, input and published accuracy). `named` tells whether
what a user typed names published weights (a name, ``imagenet`` = ``bvlc_alexnet``, or an
http(s) URL) rather than a path; an existing path of the same name wins, with a note.
`fetch_file` downloads a file once and verifies it. Converting it is the builder's job
(`keras_alexnet.model.pretrained_dir`), which caches the converted model directory here,
so that a later call touches neither the network nor the converter; every tool opens
names through `keras_alexnet.runs.open_run`.

The cache is ``$KERAS_ALEXNET_CACHE`` (default ``~/.cache/keras_alexnet``)``/weights/<name>/``:
the downloaded file and ``model/``, the converted model directory. Environment:

- ``KERAS_ALEXNET_WEIGHTS_MIRROR``: a base URL tried before the publishers' (an
  organisation's internal copy, same file names: ``$MIRROR/bvlc_alexnet.caffemodel``);
- ``KERAS_ALEXNET_OFFLINE=1``: use only the cache (a file put there by hand is verified and
  converted; nothing is downloaded).

Downloads go through pooch (`pooch.retrieve`: a temporary file renamed only when complete,
SHA-1 / SHA-256 checked; ``keras.utils.get_file`` checks only MD5 / SHA-256, takes a
40-digit SHA-1 for an MD5, and writes straight to the final path). Added here: several
URLs per name, hashes given as a prefix (torchvision names its files by the first 8 hex
digits of their SHA-256), a lock per cache entry (`filelock`: two processes asking for
the same weights download and convert them once), a file moved into the cache only after
its hash matched, and one error naming every URL tried.

Command line: ``python -m keras_alexnet.pretrained list | clear [NAME]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

from keras_alexnet.run_files import CONFIG_FILE

CACHE_ENV = "KERAS_ALEXNET_CACHE"
MIRROR_ENV = "KERAS_ALEXNET_WEIGHTS_MIRROR"
OFFLINE_ENV = "KERAS_ALEXNET_OFFLINE"
MODEL_DIR = "model"  # the converted model directory inside a cache entry
DOWNLOAD_TIMEOUT_S = 60  # per connection and per read, not for the whole file


@dataclasses.dataclass(frozen=True)
class PublishedWeights:
    """One published trained AlexNet.

    Attributes:
        name: the name users type.
        description: one line.
        format: the converter that reads it (`keras_alexnet.convert.FORMATS`).
        variant: the network (`keras_alexnet.variants.VARIANTS`).
        file_name: the published file's name (kept in the cache and on a mirror).
        urls: where the publisher serves it, tried in order.
        unverified_urls: other places known to serve the same file, tried after ``urls``;
            a download from one is used only when it matches ``hash``.
        hash: ``"sha1:<hex>"`` or ``"sha256:<hex>"``; fewer hex digits than the full
            digest are a prefix (torchvision publishes 8).
        hash_source: where the publisher states the hash.
        mean: what is subtracted from the input (`keras_alexnet.convert` preprocessing).
        top1, top5: published ILSVRC-2012 validation accuracy (%), centre crop.
        accuracy_source: where it is published.
        needs: the pip extra that reading the file needs, or None.
    """

    name: str
    description: str
    format: str
    variant: str
    file_name: str
    urls: tuple
    unverified_urls: tuple
    hash: str
    hash_source: str
    mean: str
    top1: float
    top5: float
    accuracy_source: str
    needs: str | None = None


# BVLC publishes no hash for its mean image (caffe_ilsvrc12.tar.gz, data/ilsvrc12/
# get_ilsvrc_aux.sh), so the Caffe nets are served with the channel mean B, G, R = 104, 117,
# 123 (what Caffe's own classification example subtracts): see docs/paper.md, "Published
# AlexNets", for what that costs.
_CAFFE_MEAN = ("channel: B, G, R = 104, 117, 123 (BVLC's mean image has no published hash; "
               "convert it with --mean for the mean image)")

WEIGHTS = {
    "bvlc_alexnet": PublishedWeights(
        name="bvlc_alexnet",
        description="BVLC's Caffe AlexNet: the paper's towers, LRN across both towers",
        format="caffe", variant="bvlc_alexnet", file_name="bvlc_alexnet.caffemodel",
        urls=("http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel",),
        # Apache MXNet's converter lists this copy with BVLC's SHA-1
        # (tools/caffe_converter/convert_caffe_modelzoo.py); OpenVINO's model zoo served one
        # of 243,862,414 bytes (models/public/alexnet/model.yml, a SHA-384 only).
        unverified_urls=(
            "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/caffe/models/bvlc_alexnet/bvlc_alexnet.caffemodel",
            "https://storage.openvinotoolkit.org/repositories/open_model_zoo/public/2022.1/alexnet/bvlc_alexnet.caffemodel",
        ),
        hash="sha1:9116a64c0fbe4459d18f4bb6b56d647b63920377",
        hash_source="BVLC/caffe models/bvlc_alexnet/readme.md (sha1)",
        mean=_CAFFE_MEAN, top1=57.1, top5=80.2,
        accuracy_source="BVLC/caffe models/bvlc_alexnet/readme.md (centre crop)",
    ),
    "caffenet": PublishedWeights(
        name="caffenet",
        description="BVLC's CaffeNet (bvlc_reference_caffenet): bvlc_alexnet with pooling before LRN",
        format="caffe", variant="caffenet", file_name="bvlc_reference_caffenet.caffemodel",
        urls=("http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel",),
        # OpenVINO's model zoo (models/public/caffenet/model.yml, 243,862,418 bytes, SHA-384).
        unverified_urls=(
            "https://storage.openvinotoolkit.org/repositories/open_model_zoo/public/2022.1/caffenet/bvlc_reference_caffenet.caffemodel",
        ),
        hash="sha1:4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46",
        hash_source="BVLC/caffe models/bvlc_reference_caffenet/readme.md (sha1)",
        mean=_CAFFE_MEAN, top1=57.4, top5=80.4,
        accuracy_source="BVLC/caffe models/bvlc_reference_caffenet/readme.md (centre crop)",
    ),
    "torchvision": PublishedWeights(
        name="torchvision",
        description="torchvision's AlexNet_Weights.IMAGENET1K_V1 ('one weird trick' network)",
        format="torchvision", variant="torchvision", file_name="alexnet-owt-7be5be79.pth",
        urls=("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",),
        unverified_urls=(),
        hash="sha256:7be5be79",
        hash_source="the file name (torchvision.hub.check_hash: the SHA-256's first 8 hex digits)",
        mean="channel: RGB / 255 - (0.485, 0.456, 0.406), / (0.229, 0.224, 0.225)",
        top1=56.522, top5=79.066,
        accuracy_source="torchvision's AlexNet_Weights.IMAGENET1K_V1 documentation",
        needs="torch",
    ),
}
ALIASES = {"imagenet": "bvlc_alexnet"}  # what keras.applications users type


class WeightsError(OSError):
    """Named weights that cannot be had: every URL failed, a hash mismatch, offline."""


# ---------------------------------------------------------------------------------------
# The input each published format expects, recorded in a model directory's config.json.

FORMATS = ("caffe", "npy", "torchvision")  # what keras_alexnet.convert reads
FORMAT_OF_SUFFIX = {".caffemodel": "caffe", ".npy": "npy", ".pth": "torchvision", ".pt": "torchvision"}
CAFFE_MEAN_RGB = [123.0, 117.0, 104.0]  # Caffe's B, G, R = 104, 117, 123
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


def caffe_preprocessing(mean_image=False):
    """Caffe's input: 227 crops of the 256 square, BGR, minus the mean image or B,G,R
    104, 117, 123."""
    common = {"crop_size": 227, "resize_size": 256, "std_rgb": None, "channel_order": "BGR"}
    if mean_image:
        return dict(
            common, mean="image", mean_rgb=None,
            provenance="Caffe's bvlc_alexnet / bvlc_reference_caffenet input (deploy.prototxt, "
            "227x227 BGR in [0, 255]) minus the mean image of the --mean binaryproto "
            "(ilsvrc_2012_mean), cropped at the same window.",
        )
    return dict(
        common, mean="channel", mean_rgb=list(CAFFE_MEAN_RGB),
        provenance="Caffe's bvlc_alexnet / bvlc_reference_caffenet input (deploy.prototxt, "
        "227x227 BGR in [0, 255]) minus Caffe's per-channel ImageNet mean B,G,R = 104, 117, "
        "123 (the channel means of ilsvrc_2012_mean are 104.0, 116.7, 122.7).",
    )


def torchvision_preprocessing():
    """torchvision's IMAGENET1K_V1 transforms: resize 256, centre crop 224, /255, Normalize."""
    return {
        "crop_size": 224, "resize_size": 256, "mean": "channel",
        "mean_rgb": [255.0 * m for m in TORCHVISION_MEAN],
        "std_rgb": [255.0 * s for s in TORCHVISION_STD],
        "channel_order": "RGB",
        "provenance": "torchvision's AlexNet_Weights.IMAGENET1K_V1 transforms: resize 256, "
        "centre crop 224, /255, Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, "
        "0.225)), here in [0, 255] units.",
    }


def preprocessing(fmt):
    """The ``preprocessing`` block of a file of format ``fmt`` (Caffe's with the channel mean)."""
    return torchvision_preprocessing() if fmt == "torchvision" else caffe_preprocessing()


# ---------------------------------------------------------------------------------------
# Names, paths and the cache.


def cache_root():
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "keras_alexnet").expanduser() / "weights"


def offline():
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def canonical_name(spec):
    """The `WEIGHTS` key ``spec`` names (case-insensitive, aliases included), or None."""
    key = str(spec).strip().lower()
    key = ALIASES.get(key, key)
    return key if key in WEIGHTS else None


def is_url(spec):
    return str(spec).strip().lower().startswith(("http://", "https://"))


def split_url_hash(spec):
    """``(url, hash or None)`` of ``URL#sha256=<hex>`` (or ``#sha1=<hex>``): how a command
    line, which has no ``file_hash=``, gives a URL its hash."""
    url, _, fragment = str(spec).strip().partition("#")
    algo, _, digest = fragment.partition("=")
    if fragment and not digest:
        raise WeightsError(f"{spec}: the part after '#' must be sha256=<hex> or sha1=<hex>.")
    return url, (f"{algo.lower()}:{digest}" if digest else None)


def _url_entry(url, file_hash):
    """A `PublishedWeights` for a user's URL: its format from the file name."""
    file_name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    suffix = Path(file_name).suffix.lower()
    fmt = FORMAT_OF_SUFFIX.get(suffix)
    if fmt is None:
        raise WeightsError(f"{url}: cannot tell the weights format from {file_name!r} "
                           "(.caffemodel, .npy or .pth).")
    if file_hash is not None:
        _parse_hash(file_hash)
    # The hash is part of the key: the same URL asked for with another hash (or first without
    # one) is another entry, downloaded and verified afresh, never the cached bytes unchecked.
    key = hashlib.sha256(f"{url}\n{file_hash or ''}".encode()).hexdigest()[:16]
    return PublishedWeights(
        name=f"url-{key}", description=url, format=fmt, variant="", file_name=file_name,
        urls=(url,), unverified_urls=(), hash=file_hash or "", hash_source="file_hash=",
        mean="", top1=float("nan"), top5=float("nan"), accuracy_source="")


def entry_dir(entry):
    return cache_root() / entry.name


def file_path(entry):
    return entry_dir(entry) / entry.file_name


def model_dir_path(entry):
    return entry_dir(entry) / MODEL_DIR


def names():
    return sorted(WEIGHTS) + sorted(ALIASES)


def named(spec, file_hash=None):
    """The `PublishedWeights` that ``spec`` names (a name in `WEIGHTS`, an alias, or an
    http(s) URL with its optional ``file_hash``), or None for anything else (a path). An
    existing path wins over a name, with a note.

    Args:
        spec: what the user typed.
        file_hash: for a URL: ``"sha256:<hex>"`` (or ``"sha1:<hex>"``); a bare hex digest
            is a SHA-256. Without one the download is not verified (a warning says so).
    """
    if spec is None or not isinstance(spec, (str, os.PathLike)):
        return None
    key = canonical_name(spec)
    url = is_url(spec)
    if key is None and not url:
        return None
    path = Path(str(spec)).expanduser()
    if path.exists():
        logging.getLogger(__name__).warning(
            "%s: using the path %s, not the named weights %r (to use those, run from another "
            "directory or rename the path).", spec, path.resolve(), key or str(spec))
        return None
    if key is not None:
        if file_hash is not None:
            raise ValueError(f"file_hash applies to a URL; the named weights {key!r} are checked "
                             f"against their publisher's hash ({WEIGHTS[key].hash}).")
        return WEIGHTS[key]
    spec, fragment_hash = split_url_hash(spec)
    if file_hash is None:
        file_hash = fragment_hash
    elif fragment_hash is not None and fragment_hash.lower() != str(file_hash).lower():
        raise ValueError(f"{spec}: two different hashes given (#{fragment_hash} and {file_hash}).")
    if file_hash is None:
        warnings.warn(f"{spec}: no file_hash given, so the download is not verified. Pass "
                      "file_hash='sha256:<hex>', or on a command line URL#sha256=<hex> (the hash "
                      "its publisher states).", stacklevel=3)
    elif ":" not in str(file_hash):
        file_hash = f"sha256:{file_hash}"
    return _url_entry(str(spec), file_hash)


def unknown_message(spec):
    return (f"{spec}: no such file or directory, and not named weights ({', '.join(names())}) "
            "or an http(s) URL.")


def converted(entry):
    """``entry``'s converted model directory when it is complete and made from a file of
    ``entry``'s hash, else None. Complete: its ``config.json`` is written last
    (`keras_alexnet.run_files.write_model_dir` is atomic). The hash: a table entry whose
    hash changed (new published bytes) is converted again, never served from the old."""
    out = model_dir_path(entry)
    try:
        source = json.loads((out / CONFIG_FILE).read_text()).get("source") or {}
    except (OSError, ValueError):
        return None
    return out if (source.get("hash") or "") == (entry.hash or "") else None


# ---------------------------------------------------------------------------------------
# Download, verify, convert: each once per cache entry, under its lock.


def _parse_hash(text):
    algo, _, digest = str(text).partition(":")
    algo, digest = algo.lower(), digest.lower()
    full = {"sha1": 40, "sha256": 64}
    if algo not in full or not digest or len(digest) > full[algo] or len(digest) < 8 \
            or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"hash {text!r}: expected 'sha1:<hex>' or 'sha256:<hex>' (at least 8 "
                         "hex digits).")
    return algo, digest


def file_hash_of(path, algo="sha256"):
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_matches(path, expected):
    """Whether ``path`` has the hash ``expected`` (``algo:hex``; a short hex is a prefix)."""
    if not expected:
        return True
    algo, digest = _parse_hash(expected)
    return file_hash_of(path, algo).startswith(digest)


def lock(entry):
    """The cross-process lock of ``entry``'s cache entry (hold it to download, convert or
    clear)."""
    from filelock import FileLock

    entry_dir(entry).mkdir(parents=True, exist_ok=True)
    return FileLock(str(entry_dir(entry) / ".lock"))


def candidate_urls(entry):
    urls = []
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        urls.append(f"{mirror.rstrip('/')}/{entry.file_name}")
    return urls + list(entry.urls) + list(entry.unverified_urls)


def _hand_placed_help(entry):
    algo_hex = entry.hash or "(no hash given)"
    return (f"A file downloaded by hand may be put at {file_path(entry)} (it must have "
            f"{algo_hex}); it is verified and converted on the next call.")


def _download(entry, progressbar):
    """Downloads ``entry``'s file into its cache entry (caller holds the lock): each URL
    in turn into ``.partial/`` (pooch renames its temporary file there only when the
    transfer completed), checked against the hash, then moved into place."""
    import pooch

    pooch.get_logger().setLevel(logging.WARNING)  # it logs every download at INFO
    target = file_path(entry)
    partial_dir = entry_dir(entry) / ".partial"
    errors = []
    for url in candidate_urls(entry):
        shutil.rmtree(partial_dir, ignore_errors=True)
        print(f"Downloading {entry.name} from {url} ...", file=sys.stderr, flush=True)
        try:
            got = pooch.retrieve(
                url, known_hash=None, fname=entry.file_name, path=partial_dir,
                downloader=pooch.HTTPDownloader(progressbar=progressbar, timeout=DOWNLOAD_TIMEOUT_S))
        except Exception as e:  # requests' and pooch's errors: report them all at the end
            errors.append(f"{url}: {type(e).__name__}: {e}")
            continue
        if not hash_matches(got, entry.hash):
            actual = file_hash_of(got, _parse_hash(entry.hash)[0])
            shutil.rmtree(partial_dir, ignore_errors=True)
            errors.append(f"{url}: hash mismatch: {entry.hash} expected, got "
                          f"{actual[:len(_parse_hash(entry.hash)[1])]}; the file was removed")
            continue
        os.replace(got, target)
        shutil.rmtree(partial_dir, ignore_errors=True)
        return target
    raise WeightsError(
        f"Could not download {entry.name} ({entry.file_name}). Tried:\n  "
        + "\n  ".join(errors) + f"\n{_hand_placed_help(entry)}")


def fetch_file(entry, progressbar=True):
    """``entry``'s verified file in the cache, downloaded if needed (under the lock)."""
    with lock(entry):
        return fetch_file_locked(entry, progressbar)


def fetch_file_locked(entry, progressbar=True):
    """`fetch_file` for a caller that holds `lock` (entry)."""
    target = file_path(entry)
    if target.exists():
        if hash_matches(target, entry.hash):
            return target
        bad = target.with_name(target.name + ".mismatch")
        os.replace(target, bad)
        bad.unlink()
        if offline():
            raise WeightsError(f"{target}: hash mismatch ({entry.hash} expected): the file was "
                               f"removed. {_hand_placed_help(entry)}")
        logging.getLogger(__name__).warning("%s: hash mismatch, removed; downloading again.", target)
    if offline():
        raise WeightsError(f"{OFFLINE_ENV} is set and {entry.name} is not in the cache. "
                           f"{_hand_placed_help(entry)}")
    return _download(entry, progressbar)


def clear(name=None):
    """Removes one cache entry (a name or a URL) or the whole cache; returns what went."""
    if name is None:
        entries = [d for d in cache_root().iterdir() if d.is_dir()] if cache_root().is_dir() else []
        target = cache_root()
    else:
        key = canonical_name(name)
        if key:
            entry = WEIGHTS[key]
        elif is_url(name):
            entry = _url_entry(*split_url_hash(name))
        else:
            raise FileNotFoundError(f"{name}: not named weights ({', '.join(names())}) or a URL.")
        entries = [entry_dir(entry)] if entry_dir(entry).is_dir() else []
        target = entry_dir(entry)
    from filelock import FileLock

    for folder in entries:
        # Under the entry's lock, so a download or conversion in another process is not cut
        # short; the lock file itself stays (removing it would race with its next user).
        with FileLock(str(folder / ".lock")):
            for item in folder.iterdir():
                if item.name != ".lock":
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
    return target


def _size(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if path.exists() else 0


def describe():
    """The table `list` prints: each name, its network, published accuracy and cache."""
    rows = [("name", "variant", "top-1", "top-5", "cached")]
    for name, w in WEIGHTS.items():
        alias = [a for a, n in ALIASES.items() if n == name]
        state = (f"{model_dir_path(w)} ({_size(entry_dir(w)) / 1e6:.0f} MB)" if converted(w)
                 else "file only" if file_path(w).exists() else "no")
        rows.append((name + (f" ({', '.join(alias)})" if alias else ""), w.variant,
                     f"{w.top1:.1f}%", f"{w.top5:.1f}%", state))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]),
                        r[3].rjust(widths[3]), r[4]]) for r in rows]
    lines.append(f"cache: {cache_root()} (${CACHE_ENV}); accuracy: as published, ILSVRC-2012 val, "
                 "centre crop")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_alexnet.pretrained",
                                     description="The named published AlexNets and their cache.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="names, networks, published accuracy, what is cached")
    rm = sub.add_parser("clear", help="remove NAME's cache entry, or the whole cache")
    rm.add_argument("name", nargs="?")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print(describe())
        else:
            print(f"removed {clear(args.name)}")
    except (WeightsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from keras_alexnet import startup

    startup.own_process()  # the package is imported: freeze it (keras_alexnet/startup.py)
    sys.exit(main())
