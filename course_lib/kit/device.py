"""Device choice, seeding, and the environment report shown in 00_welcome."""
from __future__ import annotations

import os
import platform
import random
import sys
import warnings

import numpy as np
import torch

DEVICE_ENV = "COURSE_DEVICE"
_KNOWN = ("cpu", "cuda", "mps")


def get_device() -> torch.device:
    """CUDA when available, else CPU. COURSE_DEVICE=cpu|cuda|mps overrides (MPS only when asked for)."""
    wanted = os.environ.get(DEVICE_ENV, "").strip().lower()
    if not wanted:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted not in _KNOWN:
        raise ValueError(f"{DEVICE_ENV}={wanted!r} is not a device this course knows; use one of {', '.join(_KNOWN)}")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{DEVICE_ENV}=cuda but torch sees no CUDA GPU; unset {DEVICE_ENV} to use the CPU")
    if wanted == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"{DEVICE_ENV}=mps but this torch build has no usable MPS backend; unset {DEVICE_ENV}")
        # Opt-in only: some ops fall back or differ numerically, so printed numbers may not match the text.
        warnings.warn("MPS is experimental in this course: numbers may differ slightly from the notebooks' text",
                      stacklevel=2)
    return torch.device(wanted)


def seed_everything(seed: int = 0) -> None:
    """Seed python, numpy and torch so the same run prints the same numbers."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # Cheap determinism: cuDNN picks deterministic kernels; we avoid use_deterministic_algorithms(True)
    # because it errors on some CUDA ops learners may call.
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def widget_frontend_hint() -> str:
    """What we can tell about widgets from inside the kernel (the frontend itself is invisible to Python)."""
    try:
        import ipywidgets
    except ImportError:
        return "ipywidgets not installed: widgets fall back to static figures"
    from course_lib.kit.widgets import widgets_enabled
    mode = "live" if widgets_enabled() else "static figures"
    return f"ipywidgets {ipywidgets.__version__} ({mode})"


def environment_report() -> dict:
    """Versions, device and platform facts for the setup check."""
    import matplotlib

    dev = get_device()
    report = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else "none",
        "cpu threads": torch.get_num_threads(),
        "colab": in_colab(),
        "widgets": widget_frontend_hint(),
    }
    return report


def print_environment_report() -> None:
    for key, value in environment_report().items():
        print(f"{key:>12}: {value}")
