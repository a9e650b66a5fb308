"""Peak memory of a scan with live analysis: 1,000 tiles against 100 tiles.

Each size runs in a fresh process (peak RSS, ``ru_maxrss``, is per process):
a demo scan at 10x with a 512 × 512 camera and fixed focus, the live
analysis beside it as ``cordscope scan`` runs it
(:class:`~analysis.worker_process.AnalysisProcess`, its own process), then
``finalize()`` (final regions, tables, HDF5 analysis groups, CSV). The peak
reported is the scan process's plus the analysis process's (an upper bound
of what both held at once). The small scan is one
C5 section (109 tiles), the large one the twelve coronal sections of rat01
to rat04 (C5, Th7, L2; 1,046 tiles), so both have the same largest section
(a C5): what is compared is the growth with the number of tiles. The
issue's target: the large scan's peak exceeds the small one's by at most
100 MB — tiles are not kept, only reduced per-section state, and only the
sections being scanned stay in memory. (Peak memory does grow with the
largest section's area: with the 9.6 mm lesion section in the scan, as in
``cordscope scan --demo``, the peak is about 200 MB above the small scan's.)

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
LARGE = tuple(f"rat0{a}-{level}" for a in range(1, 5) for level in ("C5", "Th7", "L2"))
TARGET_MB = 100.0


def child(n_sections: str, analysis: bool = True) -> None:
    """Run one scan with live analysis and print {"tiles", "peak_rss_mb", ...} as JSON."""
    from acquisition.demo.plans import demo_plan
    from acquisition.hardware import build_core
    from acquisition.session import ScanSession
    from analysis.live import AnalysisProcess

    logging.getLogger("pymmcore-plus").setLevel(logging.ERROR)
    sections = SMALL if n_sections == "small" else LARGE
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.h5"
        core = build_core()
        try:
            core.setProperty("Camera", "SensorWidth", 512)
            core.setProperty("Camera", "SensorHeight", 512)
            plan = demo_plan(output=path, section_ids=sections, focus={"strategy": "fixed", "z_um": 0.0})
            session = ScanSession(core, plan, analysis=AnalysisProcess if analysis else None)
            marks: dict[str, float] = {}
            session.events.state_changed.connect(lambda s: marks.setdefault(s, time.perf_counter()))
            t0 = time.perf_counter()
            result = session.run().scan
            total_s = time.perf_counter() - t0
            scan_s = marks.get("finalizing", t0 + total_s) - t0
        finally:
            core.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    # the analysis process has ended: its peak is the largest of the waited-for children's
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "tiles": result.tiles_done,
                "sections": len(sections),
                "peak_rss_mb": round(peak_mb + child_mb, 1),
                "scan_process_peak_mb": round(peak_mb, 1),
                "analysis_process_peak_mb": round(child_mb, 1),
                "scan_s": round(scan_s, 1),
                "total_s": round(total_s, 1),
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
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        child(sys.argv[2], analysis="--no-analysis" not in sys.argv)
    else:
        main()
