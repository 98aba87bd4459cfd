"""What the benchmarks print about the machine they ran on, so every figure carries its hardware."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def describe(with_load: bool = False) -> str:
    load = f", load average {load_average()}" if with_load else ""
    return f"{cpu_model()}, {usable_cores()} cores{load}, Python {platform.python_version()}"
