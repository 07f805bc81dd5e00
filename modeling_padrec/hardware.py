"""What a figure was measured on, or a target trained on: every report, and every target's training record,
carries this object."""

from __future__ import annotations

import os
import platform


def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of /proc/cpuinfo; None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(field)), None)
    except OSError:
        return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_isa() -> str | None:
    """The widest x86 vector extension the CPU reports (two "AMD EPYC" machines may differ here, and torch's CPU
    kernels, hence the last bits of a float, follow it); None where /proc/cpuinfo says none."""
    flags = (_cpuinfo("flags") or "").split()
    return next((isa for isa in ("avx512f", "avx2", "avx") if isa in flags), None)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def hardware_info(device: str = "cpu") -> dict:
    import torch
    import transformers

    info = {
        "cpu": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": _version("peft"),
        "accelerate": _version("accelerate"),
        "device": str(device),
        "python": platform.python_version(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
