"""Soak: a 10,000-tile scan on the demo microscope with injected faults and the live analysis on.

The demo slide's sections, in plan order, until they hold at least
``TILES`` tiles, at 10x with a 256 × 256 camera (a 166 µm tile: minutes,
not hours), fixed focus, scanned by a :class:`~acquisition.session.ScanSession`
as ``cordscope scan`` runs it: the live analysis in its own process
(:class:`~analysis.live.AnalysisProcess`), then its final analysis. Faults
come from the demo devices' fault properties:

- the camera fails every 50th snap (``FailEveryNthSnap``);
- the XY stage fails every 200th move (``FailEveryNthMove``);
- the camera hangs once for 5 s (``HangEveryNthSnap`` past half the snaps,
  ``Hang_s`` 5) against a 2 s watchdog, so the call times out and is retried
  once the camera answers again.

Reported (one JSON line on stdout): tiles done / failed, the faults injected
(counted from the devices), the device calls retried (and how many of them
after a timeout, from the tiles' metadata), wall time of the scan and of the
final analysis, peak resident memory of the scan process and of the
analysis process up to tile 1,000 and over the whole scan (sampled every
0.25 s; target: the whole scan's peak within 50 MB of the first 1,000
tiles' for each process), and what is left once the session has ended and
the core is closed: threads of this process, child processes (an analysis
process must not be among them; multiprocessing's forkserver, started once
for the analysis processes, lives until this process ends), device calls
the watchdog gave up on that are still running.

Run: ``.venv/bin/python benchmarks/bench_soak.py [tiles]`` (default 10,000; ~10–20 min here).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import stdout_to_stderr

TILES = 10_000
SENSOR_PX = 256
SNAP_FAILURE_EVERY = 50
MOVE_FAILURE_EVERY = 200
HANG_S = 5.0
TIMEOUT_S = 2.0
MAX_RETRIES = 2
RSS_TARGET_MB = 50.0
SAMPLE_S = 0.25
EARLY_TILES = 1_000


class _MemorySampler:
    """Samples the RSS of this process and of the analysis process, keyed by tiles done."""

    def __init__(self, session: Any) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self.session = session
        self.tiles_done = 0
        self.peak_mb = {"scan_early": 0.0, "scan_all": 0.0, "analysis_early": 0.0, "analysis_all": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-memory", daemon=True)

    def _analysis_rss_mb(self) -> float:
        analysis = self.session.analysis
        process = getattr(analysis, "_process", None)
        if process is None or process.pid is None:
            return 0.0
        try:
            return self._psutil.Process(process.pid).memory_info().rss / 2**20
        except (self._psutil.NoSuchProcess, self._psutil.ZombieProcess):
            return 0.0

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            if self.session.state not in ("scanning", "paused"):
                continue
            scan_mb = self._me.memory_info().rss / 2**20
            analysis_mb = self._analysis_rss_mb()
            for name, value in (("scan", scan_mb), ("analysis", analysis_mb)):
                if self.tiles_done <= EARLY_TILES:
                    self.peak_mb[f"{name}_early"] = max(self.peak_mb[f"{name}_early"], value)
                self.peak_mb[f"{name}_all"] = max(self.peak_mb[f"{name}_all"], value)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _sections(core: Any, n_tiles: int) -> tuple[list[str], int]:
    """Demo sections in plan order until they hold at least ``n_tiles`` tiles; and their tile count."""
    from acquisition.demo.plans import demo_plan
    from acquisition.plan import plan_tiles, tile_size_um

    plan = demo_plan(output=Path("sizing.h5"), focus={"strategy": "fixed", "z_um": 0.0})
    counts: dict[str, int] = {}
    for tile in plan_tiles(plan, tile_size_um=tile_size_um(core, plan)):
        counts[tile.section_id] = counts.get(tile.section_id, 0) + 1
    chosen, total = [], 0
    for sid, n in counts.items():
        if total >= n_tiles:
            break
        chosen.append(sid)
        total += n
    return chosen, total


def _retries_in_file(path: Path) -> tuple[int, int]:
    """Device calls retried for the tiles stored, and how many of them after a timeout."""
    from acquisition.storage import ScanFile

    retried = timed_out = 0
    with ScanFile.open(path) as scan:
        for sid in scan.section_ids:
            sec = scan.section(sid)
            for t in sec.done_indices():
                calls = sec.tile_meta(int(t)).get("retried_calls") or []
                retried += len(calls)
                timed_out += sum(1 for c in calls if c.get("timed_out"))
    return retried, timed_out


def main(n_tiles: int = TILES) -> dict[str, Any]:
    """Run the soak and return its result row."""
    import psutil

    from acquisition.demo.devices import DemoCamera, DemoXYStage
    from acquisition.demo.plans import demo_plan
    from acquisition.engine import unanswered_device_calls
    from acquisition.hardware import build_core
    from acquisition.session import ScanSession
    from analysis.live import AnalysisProcess

    threads_before = {t.ident for t in threading.enumerate()}
    core = build_core()
    try:
        core.setProperty("Camera", "SensorWidth", SENSOR_PX)
        core.setProperty("Camera", "SensorHeight", SENSOR_PX)
        section_ids, planned = _sections(core, n_tiles)
        # one hang: past half the snaps of the scan (two per tile, plus the retried ones), so it comes once
        hang_at = int(planned * 1.05) + 100
        for device, prop, value in (
            ("Camera", "FailEveryNthSnap", SNAP_FAILURE_EVERY),
            ("XYStage", "FailEveryNthMove", MOVE_FAILURE_EVERY),
            ("Camera", "HangEveryNthSnap", hang_at),
            ("Camera", "Hang_s", HANG_S),
        ):
            core.setProperty(device, prop, value)
        with tempfile.TemporaryDirectory(prefix="cordscope-soak-") as tmp:
            path = Path(tmp) / "soak.h5"
            plan = demo_plan(
                output=path,
                section_ids=section_ids,
                focus={"strategy": "fixed", "z_um": 0.0},
            )
            plan = plan.model_copy(
                update={
                    "reliability": plan.reliability.model_copy(
                        update={"max_retries": MAX_RETRIES, "tile_timeout_s": TIMEOUT_S}
                    )
                }
            )
            session = ScanSession(core, plan, analysis=AnalysisProcess)
            sampler = _MemorySampler(session)
            marks: dict[str, float] = {}
            session.events.state_changed.connect(lambda s: marks.setdefault(s, time.perf_counter()))

            def on_progress(p: Any) -> None:
                sampler.tiles_done = p.tiles_done + p.tiles_failed

            session.events.progress.connect(on_progress)
            sampler.start()
            t0 = time.perf_counter()
            result = session.run()
            t_end = time.perf_counter()
            sampler.stop()
            camera = next(d for d in _live(DemoCamera) if d.get_label() == "Camera")
            stage = next(d for d in _live(DemoXYStage) if d.get_label() == "XYStage")
            snaps, moves = camera._snap_count, stage._move_count
            retried_in_file, timed_out_in_file = _retries_in_file(path)
            scan = result.scan
            if session.analysis is not None:
                session.analysis.join(30)
    finally:
        core.close()
    time.sleep(1.0)  # daemon helpers (relay threads) wind down
    me = psutil.Process()
    threads_left = [t.name for t in threading.enumerate() if t.ident not in threads_before]
    children = me.children(recursive=True)
    forkserver = [c for c in children if "forkserver" in " ".join(_cmdline(c))]
    analysis_left = [
        c.pid for c in children if c not in forkserver and c.ppid() in {f.pid for f in forkserver}
    ]
    other_children = [" ".join(_cmdline(c))[:80] for c in children if c not in forkserver]
    peak = sampler.peak_mb
    growth = {
        "scan": round(peak["scan_all"] - peak["scan_early"], 1),
        "analysis": round(peak["analysis_all"] - peak["analysis_early"], 1),
    }
    return {
        "benchmark": "soak",
        "sensor_px": SENSOR_PX,
        "sections": len(section_ids),
        "tiles_total": scan.tiles_total,
        "tiles_done": scan.tiles_done,
        "tiles_failed": scan.tiles_failed,
        "scan_state": scan.state,
        "analysis_complete": result.tables is not None and result.analysis_error is None,
        "analysis_error": result.analysis_error,
        "snaps": snaps,
        "moves": moves,
        "snap_failures_injected": snaps // SNAP_FAILURE_EVERY,
        "move_failures_injected": moves // MOVE_FAILURE_EVERY,
        "hangs_injected": snaps // hang_at,
        "calls_retried": scan.retried_calls,
        "calls_retried_in_tile_meta": retried_in_file,
        "timeouts_retried_in_tile_meta": timed_out_in_file,
        "scan_wall_s": round(marks.get("finalizing", t_end) - t0, 1),
        "final_analysis_s": round(t_end - marks.get("finalizing", t_end), 1),
        "tiles_per_s": round(scan.tiles_total / max(marks.get("finalizing", t_end) - t0, 1e-9), 1),
        "peak_rss_mb_first_1k_tiles": {
            "scan": round(peak["scan_early"], 1),
            "analysis": round(peak["analysis_early"], 1),
        },
        "peak_rss_mb_all_tiles": {
            "scan": round(peak["scan_all"], 1),
            "analysis": round(peak["analysis_all"], 1),
        },
        "rss_growth_mb": growth,
        "rss_target_mb": RSS_TARGET_MB,
        "meets_rss_target": all(v <= RSS_TARGET_MB for v in growth.values()),
        "threads_left": threads_left,
        "analysis_processes_left": analysis_left,
        "other_child_processes_left": other_children,
        "forkserver_processes": len(forkserver),
        "unanswered_device_calls": unanswered_device_calls(),
    }


def _live(cls: type) -> list[Any]:
    from acquisition.demo.devices import _live_demo_devices

    return [d for d in _live_demo_devices() if isinstance(d, cls) and d._core_proxy_ is not None]


def _cmdline(process: Any) -> list[str]:
    try:
        return list(process.cmdline())
    except Exception:  # the process ended meanwhile
        return []


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    logging.getLogger("pymmcore-plus").setLevel(logging.ERROR)
    tiles = int(sys.argv[1]) if len(sys.argv) > 1 else TILES
    with stdout_to_stderr():
        row = main(tiles)
    print(json.dumps(row))
