"""What the benchmarks share: the line that says which machine the numbers came from."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    "Cores, CPU model, memory, Python and OS of this machine, for a benchmark's report"
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}, {platform.system()}"
