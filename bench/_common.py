"""What every benchmark records about the machine, how it measures CPU time, and the
training workers' one synthetic input.

Imports neither TensorFlow nor PyTorch (the workers run one framework per process):
versions are read from the installed distributions, or from a module already imported.
"""

import datetime
import importlib.metadata
import os
import platform
import resource
import sys

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")  # /proc/cpuinfo flags of bf16 hardware
_MODULE_OF = {"pillow": "PIL"}  # distribution name -> module name, where they differ


def cpu_seconds():
    """User + system CPU time of this process so far (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mib():
    """Peak resident memory of this process (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_average():
    """The 1-minute load average (on a shared machine: how many others were running)."""
    return os.getloadavg()[0]


def cpu():
    """CPU model, core counts and instruction-set facts from /proc/cpuinfo."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    bf16 = sorted(flags & set(BF16_FLAGS))
    return dict(
        cpu_model=model or platform.processor() or "unknown",
        cores=os.cpu_count(),
        cores_available=len(os.sched_getaffinity(0)),
        avx512=("avx512f" in flags),
        bf16_hardware=" ".join(bf16) if bf16 else "none (bf16 emulated)",
    )


def versions(*packages):
    """``{"python": ..., package: version or None}``; a module already imported wins
    over the installed metadata (an uninstalled checkout of keras_alexnet)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        module = sys.modules.get(_MODULE_OF.get(pkg, pkg))
        version = getattr(module, "__version__", None)
        if version is None:
            try:
                version = importlib.metadata.version(pkg)
            except importlib.metadata.PackageNotFoundError:
                pass
        out[pkg] = version
    return out


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine(*packages):
    """The ``machine`` block of a result file: `cpu`, the load average, `versions` of
    ``packages`` and the date (UTC)."""
    return dict(cpu(), load_average_at_start=os.getloadavg(), **versions(*packages),
                date_utc=now_utc())


def synthetic_batch(batch, size=227, classes=1000, seed=0):
    """The training workers' fixed input, the same draws in every framework: mean-subtracted-
    looking pixels (NHWC float32) and labels."""
    import numpy as np

    rng = np.random.RandomState(seed)
    x = (rng.uniform(0.0, 255.0, (batch, size, size, 3)) - 120.0).astype("float32")
    y = rng.randint(0, classes, (batch,)).astype("int64")
    return x, y
