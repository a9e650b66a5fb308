"""Run a benchmark on one core: single-threaded numerics, pinned to the idlest CPU.

Import this module before numpy (it sets the thread counts numpy reads at
import) and use :data:`CPU`, the CPU this process was pinned to (None where
pinning is unsupported).
"""

from __future__ import annotations

import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"


def _idle_ticks() -> dict[int, int]:
    ticks = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks[int(name[3:])] = int(fields[3]) + int(fields[4])  # idle + iowait
    return ticks


def pin_to_one_core() -> int | None:
    """Pin this process to the idlest CPU it may use (other jobs may share the machine)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    try:
        before = _idle_ticks()
        time.sleep(0.3)
        after = _idle_ticks()
        cpu = max(allowed, key=lambda c: after.get(c, 0) - before.get(c, 0))
    except OSError:  # no /proc/stat: any allowed CPU will do
        cpu = allowed[-1]
    os.sched_setaffinity(0, {cpu})
    return cpu


CPU = pin_to_one_core()
