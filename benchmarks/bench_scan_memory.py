"""Peak memory of a scan with live analysis: 1,000 tiles against 100 tiles.

Each size runs in a fresh process (peak RSS, ``ru_maxrss``, is per process):
a demo scan at 10x with a 512 × 512 camera and fixed focus, the live
:class:`~analysis.worker.AnalysisWorker` beside it, then ``finalize()``
(final regions, tables, HDF5 analysis groups, CSV). The small scan is one
C5 section (~100 tiles), the large one the ten sections of ``cordscope scan
--demo`` (~1,000 tiles). The issue's target: the large scan's peak exceeds
the small one's by at most 100 MB — tiles are not kept, only reduced
per-section state, and a section's state is dropped once it is finished.

Run: ``.venv/bin/python benchmarks/bench_scan_memory.py``; stdout carries one JSON line.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMALL = ("rat01-C5",)
TARGET_MB = 100.0


def child(n_sections: str) -> None:
    """Run one scan with live analysis and print {"tiles", "peak_rss_mb", ...} as JSON."""
    from acquisition.controller import ScanController
    from acquisition.hardware import build_core
    from acquisition.plan import demo_plan
    from analysis.worker import AnalysisWorker
    from cordscope.scanning import DEMO_SCAN_SECTIONS

    logging.getLogger("pymmcore-plus").setLevel(logging.ERROR)
    sections = SMALL if n_sections == "small" else DEMO_SCAN_SECTIONS
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.h5"
        core = build_core()
        try:
            core.setProperty("Camera", "SensorWidth", 512)
            core.setProperty("Camera", "SensorHeight", 512)
            plan = demo_plan(output=path, section_ids=sections, focus={"strategy": "fixed", "z_um": 0.0})
            worker = AnalysisWorker(path)
            t0 = time.perf_counter()
            result = ScanController(core, plan, extra_outputs=[worker]).run()
            scan_s = time.perf_counter() - t0
            worker.finalize()
            total_s = time.perf_counter() - t0
        finally:
            core.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(
        json.dumps(
            {
                "tiles": result.tiles_done,
                "sections": len(sections),
                "peak_rss_mb": round(peak_mb, 1),
                "scan_s": round(scan_s, 1),
                "total_s": round(total_s, 1),
                "skipped": worker.skipped,
            }
        )
    )


def run(size: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", size], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run both sizes in fresh processes; print one JSON line."""
    small, large = run("small"), run("large")
    diff = large["peak_rss_mb"] - small["peak_rss_mb"]
    print(
        json.dumps(
            {
                "benchmark": "scan_memory",
                "small": small,
                "large": large,
                "peak_difference_mb": round(diff, 1),
                "target_mb": TARGET_MB,
                "meets_target": diff <= TARGET_MB,
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
