"""The CPU cores this process may use, and how many frontend workers they pay for.

`os.cpu_count()` is the machine's count. In a container it may be much more than the process
gets: a cpuset (`sched_getaffinity`) or a CPU quota (cgroup v2 `cpu.max`, Kubernetes'
`resources.limits.cpu`) bound it. `available_cores` takes the least of the three.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# Cores the device process keeps (its event loop, gRPC's and XLA's threads, the device
# thread) before frontend workers pay; more frontends than this add no throughput here.
DEVICE_PROCESS_CORES = 2
MAX_AUTO_FRONTEND_WORKERS = 8
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def auto_frontend_workers(cores: int) -> int:
    """`--frontend-workers auto`: a frontend per core beyond the device process's two, up to
    `MAX_AUTO_FRONTEND_WORKERS`. On 2 cores none: measured there, a frontend's gain does not
    pay for the cores it takes from the model (docs/performance.md, "Frontend workers")."""
    return max(0, min(MAX_AUTO_FRONTEND_WORKERS, cores - DEVICE_PROCESS_CORES))


def cgroup_cpu_limit(cpu_max: str) -> int | None:
    """Whole cores of a cgroup v2 `cpu.max` ("<quota> <period>", or "max <period>": none),
    rounded up (a quota of 1.5 cores can keep 2 threads busy part of the time)."""
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: the machine's, its affinity's, its cgroup's quota."""
    counts = [os.cpu_count() or 1]
    if hasattr(os, "sched_getaffinity"):
        counts.append(len(os.sched_getaffinity(0)))
    try:
        limit = cgroup_cpu_limit(cpu_max.read_text())
    except OSError:
        limit = None
    if limit is not None:
        counts.append(limit)
    return min(counts)
