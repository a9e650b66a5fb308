"""What the scan benchmarks share: a real rig's timings and a stdout kept for the result line.

:data:`RIG_TIMINGS` gives the demo microscope the timings of a typical
motorised rig (each a device property of the demo adapters): stage 20 mm/s,
200 mm/s², 30 ms settle; filter wheel 50 ms per change; objective turret
500 ms; camera readout 20 ms after each exposure, which takes its real time.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

RIG_TIMINGS: dict[tuple[str, str], Any] = {
    ("XYStage", "Speed_um_per_s"): 20_000.0,
    ("XYStage", "Acceleration_um_per_s2"): 200_000.0,
    ("XYStage", "SettleTime_ms"): 30.0,
    ("FilterWheel", "SwitchTime_ms"): 50.0,
    ("Objective", "SwitchTime_ms"): 500.0,
    ("Camera", "ReadoutTime_ms"): 20.0,
    ("Camera", "ExposureTiming"): "Real",
}


def set_rig_timings(core: Any, timings: dict[tuple[str, str], Any] = RIG_TIMINGS) -> None:
    """Set ``timings`` (``{(device, property): value}``) on the demo microscope's devices."""
    for (device, prop), value in timings.items():
        core.setProperty(device, prop, value)


def timings_record(timings: dict[tuple[str, str], Any] = RIG_TIMINGS) -> dict[str, Any]:
    """The timings as ``{"Device.Property": value}``, for a benchmark's JSON line."""
    return {f"{d}.{p}": v for (d, p), v in timings.items()}


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to fd 1 (Python or C) to stderr, so stdout holds only the result line."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
