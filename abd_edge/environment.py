"""A description of the machine and the installed packages, without importing torch.

Benchmarks record it next to their numbers, and ``abd-edge info`` prints it
on a device that may have only the runtime installed: packages that are
absent are reported as None, and torch is only asked about its threads and
GPU when it is already importable.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path
from typing import Any

from . import __version__

#: distributions worth naming when someone reports a result or a bug
PACKAGES = ("numpy", "onnxruntime", "onnx", "torch", "torchvision", "cryptography", "opacus")


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment(*, with_torch: bool = False) -> dict[str, Any]:
    """Versions, CPU and time; ``with_torch`` adds torch's thread count and GPU (imports torch)."""
    env: dict[str, Any] = {
        "abd_edge": __version__,
        "python": platform.python_version(),
        "packages": package_versions(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if with_torch and env["packages"].get("torch"):
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return env
