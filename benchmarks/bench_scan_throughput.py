"""Scan throughput: CordScope's controller and writer against a bare pymmcore-plus MDA run.

The same demo acquisition runs in one process, on one demo core, four ways:

(a) ``ScanController(core, plan, overwrite=True).run()``: validation, file
    layout, the watchdog/retry ``ScanEngine`` and the crash-safe
    ``ScanWriter`` (pixels, metadata, flush, status, flush per tile);
(b) the same ``useq.MDASequence`` (compiled once, outside the timing) run by
    ``core.mda.run(sequence, output=handler)`` with pymmcore-plus' default
    ``MDAEngine`` and a minimal handler writing each frame into a plain h5py
    dataset per section (same shape, dtype and one chunk per image, no
    compression), flushed once per tile;
(c) as (a) with the live analysis as an extra output, as ``cordscope scan``
    runs it (``AnalysisProcess``: the analysis in its own process, reading
    tiles from the file as they are done); ``ratio_with_analysis`` is its
    tiles/s over the bare run's (target ≥ 0.9). The analysis never blocks
    acquisition: what it has not analysed when the scan ends it finishes in
    ``finalize()``, timed apart (``analysis_finalize_s_median``; its start-up
    is part of the timed run).
(d) as (a) with ``reliability.fsync: per_tile`` (every tile made durable
    with ``os.fsync`` before and after its status): ``fsync_per_tile_vs_off``
    is its tiles/s over (a)'s, the cost of power-cut safety on this disk.

Workload: 2048 × 2048 tiles (10x, 1331 µm field of view) of six coronal
sections of two rats (46 tiles × 2 channels, ~1.5 GB a run), a 0.001 ms
exposure (plans need > 0; the demo camera adds no exposure wait) and the
instant demo stage. Both arms time the whole thing a user pays for, from
before the file is created to after it is closed; ``ratio`` is CordScope's
tiles/s over the bare run's (target ≥ 0.9). The scan phase alone (the MDA
run, including the output thread draining) is reported too, as
``scan_only_ratio``.

The machine is small and shared, so the arms are compared within one run:
one warm-up of each on one section, then ``repeats`` rounds in ABBA order
(a b c d, d c b a, ...; fewer if the machine is so loaded that the run would
pass ~2.5 minutes) and medians. Process CPU time per tile (all threads) is
reported as well: less sensitive than wall time to other jobs sharing the
machine. Files go to a temporary directory and are
deleted after each run; the workload shrinks if the disk is short. Logs go
to stderr (pymmcore-plus' at ERROR, as ``cordscope`` without ``--verbose``);
stdout carries exactly one JSON line.

Run: ``.venv/bin/python benchmarks/bench_scan_throughput.py [repeats]``
"""

from __future__ import annotations

import os

# one thread for every numerical library, before numpy is imported (as bench_render)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from _common import stdout_to_stderr  # noqa: E402

TILE_PX = 2048
EXPOSURE_MS = 0.001
TARGET_RATIO = 0.9
DEFAULT_REPEATS = 6
#: Stop adding pairs (after at least two) once another one would end the benchmark later than this.
TIME_BUDGET_S = 240.0
SECTION_IDS = ("rat01-C5", "rat01-Th7", "rat01-L2", "rat03-C5", "rat03-Th7", "rat03-L2")
WARMUP_SECTION_IDS = ("rat05-Th7",)
#: Free disk kept beyond one run's file (the writer keeps 64 MB; validation asks for size × 1.1).
DISK_MARGIN_BYTES = 1024**3


class _PlainH5Output:
    """Bare runner output: each frame into ``tiles[t, c, z]`` of its section; flush after a tile."""

    def __init__(self, file: Any, datasets: Mapping[str, Any], tiles: Sequence[Sequence[Any]]) -> None:
        self._file = file
        self._where = [(datasets[str(sid)], int(t)) for sid, t, _x, _y in tiles]
        _, self._n_c, self._n_z, _, _ = next(iter(datasets.values())).shape
        self.frames_written = 0
        self.finished = False

    def sequenceStarted(self, sequence: Any, meta: Any = None) -> None:
        self.finished = False

    def frameReady(self, img: Any, event: Any, meta: Any) -> None:
        index = event.index
        c, z = index.get("c", 0), index.get("z", 0)
        dataset, tile = self._where[index["p"]]
        dataset[tile, c, z] = img
        self.frames_written += 1
        if c == self._n_c - 1 and z == self._n_z - 1:
            self._file.flush()

    def sequenceFinished(self, sequence: Any) -> None:
        self.finished = True


class _Bench:
    def __init__(self, core: Any, plan: Any, tmp: Path) -> None:
        from acquisition.plan import compile_plan, tile_size_um

        self.core = core
        self.plan = plan
        self.tmp = tmp
        self.sequence = compile_plan(plan, tile_size_um=tile_size_um(core, plan))
        self.tiles = self.sequence.metadata["cordscope"]["tiles"]
        self.n_tiles = len(self.tiles)
        self.n_channels = len(plan.channels)
        self.n_z = plan.n_z_slices
        self.n_runs = 0

    def _path(self, arm: str) -> Path:
        self.n_runs += 1
        return self.tmp / f"{arm}-{self.n_runs}.h5"

    def cordscope(self, *, fsync: str = "off") -> dict[str, float]:
        """One controller run; seconds of the whole run, its preparation and its scan phase."""
        from acquisition.controller import ScanController

        path = self._path("cordscope" if fsync == "off" else "fsync")
        reliability = self.plan.reliability.model_copy(update={"fsync": fsync})
        plan = self.plan.model_copy(update={"output": path, "reliability": reliability})
        marks: dict[str, float] = {}
        c0, t0 = time.process_time(), time.perf_counter()
        controller = ScanController(self.core, plan, overwrite=True)
        controller.events.state_changed.connect(lambda s: marks.setdefault(s, time.perf_counter()))
        result = controller.run()
        t1, c1 = time.perf_counter(), time.process_time()
        path.unlink()
        if result.state != "finished" or result.tiles_done != self.n_tiles:
            raise RuntimeError(
                f"CordScope run ended {result.state} with {result.tiles_done} of {self.n_tiles} tiles: "
                f"{result.message}"
            )
        return {
            "total_s": t1 - t0,
            "prepare_s": marks["scanning"] - t0,
            "scan_s": marks["finished"] - marks["scanning"],
            "cpu_s": c1 - c0,
        }

    def fsync(self) -> dict[str, float]:
        """As :meth:`cordscope` with ``reliability.fsync: per_tile`` (power-cut safety)."""
        return self.cordscope(fsync="per_tile")

    def analysis(self) -> dict[str, float]:
        """One scan session with the live analysis process, as ``cordscope scan`` runs it.

        Timed like :meth:`cordscope` until the acquisition ends (what acquisition
        costs with the analysis beside it); the analysis' catch-up and final
        results afterwards are timed separately as ``finalize_s``.
        """
        from acquisition.session import ScanSession
        from analysis.live import AnalysisProcess
        from analysis.scan_analysis import region_csv_path

        path = self._path("analysis")
        plan = self.plan.model_copy(update={"output": path})
        marks: dict[str, float] = {}
        analysed_at_end: list[int] = []
        c0, t0 = time.process_time(), time.perf_counter()
        session = ScanSession(self.core, plan, overwrite=True, analysis=AnalysisProcess)

        def on_state(state: str) -> None:
            marks.setdefault(state, time.perf_counter())
            if state == "finalizing":
                analysed_at_end.append(session.analysis.progress().tiles_analysed)

        session.events.state_changed.connect(on_state)
        result = session.run()
        t2 = time.perf_counter()
        c1 = time.process_time()
        path.unlink()
        region_csv_path(path).unlink()
        scan = result.scan
        if not result.complete or scan.tiles_done != self.n_tiles:
            raise RuntimeError(f"analysis run ended {scan.state}: {scan.message} {result.analysis_error}")
        t1 = marks["finalizing"]
        return {
            "total_s": t1 - t0,
            "prepare_s": marks["scanning"] - t0,
            "scan_s": t1 - marks["scanning"],
            "cpu_s": c1 - c0,
            "finalize_s": t2 - t1,
            "analysed_live": float(analysed_at_end[0]),
        }

    def bare(self) -> dict[str, float]:
        """One bare pymmcore-plus + h5py run, timed like :meth:`cordscope`."""
        import h5py
        import numpy as np
        from pymmcore_plus.mda import MDAEngine

        core = self.core
        if type(core.mda.engine) is not MDAEngine:
            core.mda.set_engine(MDAEngine(core))
        path = self._path("bare")
        h, w = core.getImageHeight(), core.getImageWidth()
        counts: dict[str, int] = {}
        for sid, _t, _x, _y in self.tiles:
            counts[sid] = counts.get(sid, 0) + 1
        c0, t0 = time.process_time(), time.perf_counter()
        f = h5py.File(path, "w")
        datasets = {
            sid: f.create_dataset(
                f"sections/{sid}/tiles",
                shape=(n, self.n_channels, self.n_z, h, w),
                dtype=np.uint16,
                chunks=(1, 1, 1, h, w),
            )
            for sid, n in counts.items()
        }
        handler = _PlainH5Output(f, datasets, self.tiles)
        t_scan = time.perf_counter()
        core.mda.run(self.sequence, output=handler)
        t_scan_end = time.perf_counter()
        # run() joins pymmcore-plus' output thread before returning: every frame is written by now
        frames_at_return, finished_at_return = handler.frames_written, handler.finished
        f.close()
        t1, c1 = time.perf_counter(), time.process_time()
        path.unlink()
        expected = self.n_tiles * self.n_channels * self.n_z
        if frames_at_return != expected or not finished_at_return:
            raise RuntimeError(
                f"bare run: {frames_at_return} of {expected} frames written when run() returned "
                f"(sequenceFinished seen: {finished_at_return})"
            )
        return {
            "total_s": t1 - t0,
            "prepare_s": t_scan - t0,
            "scan_s": t_scan_end - t_scan,
            "cpu_s": c1 - c0,
        }


def _plan(section_ids: Sequence[str], output: Path) -> Any:
    from acquisition.demo.plans import demo_plan

    return demo_plan(
        output=output,
        section_ids=list(section_ids),
        focus={"strategy": "fixed", "z_um": 0.0},
        anatomy_exposure_ms=EXPOSURE_MS,
        tracer_exposure_ms=EXPOSURE_MS,
    )


def _fit_to_disk(core: Any, tmp: Path) -> list[str]:
    """The benchmark sections, fewer if the disk cannot hold one run's file with margin."""
    from acquisition.plan import plan_tiles, tile_size_um

    free = shutil.disk_usage(tmp).free
    ids = list(SECTION_IDS)
    while ids:
        plan = _plan(ids, tmp / "sizing.h5")
        n = len(plan_tiles(plan, tile_size_um=tile_size_um(core, plan)))
        need = int(n * len(plan.channels) * TILE_PX * TILE_PX * 2 * 1.1) + DISK_MARGIN_BYTES
        if free >= need:
            return ids
        ids.pop()
    raise SystemExit(f"bench_scan_throughput: {free / 1e9:.1f} GB free in {tmp}; not enough for one section")


def _rate(n_tiles: int, seconds: list[float]) -> float:
    return n_tiles / statistics.median(seconds)


def main(repeats: int = DEFAULT_REPEATS) -> dict[str, Any]:
    """Run the benchmark and return its result row."""
    t_start = time.perf_counter()
    from acquisition.hardware import build_core

    core = build_core()
    try:
        core.setProperty("Camera", "SensorWidth", TILE_PX)
        core.setProperty("Camera", "SensorHeight", TILE_PX)
        with tempfile.TemporaryDirectory(prefix="cordscope-bench-") as tmp_name:
            tmp = Path(tmp_name)
            section_ids = _fit_to_disk(core, tmp)
            warmup = _Bench(core, _plan(WARMUP_SECTION_IDS, tmp / "warmup.h5"), tmp)
            warmup.cordscope()
            warmup.bare()
            warmup.analysis()
            warmup.fsync()
            bench = _Bench(core, _plan(section_ids, tmp / "scan.h5"), tmp)
            arms = ("cordscope", "bare", "analysis", "fsync")
            runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
            for i in range(repeats):
                t_pair = time.perf_counter()
                order = arms if i % 2 == 0 else arms[::-1]
                for arm in order:
                    runs[arm].append(getattr(bench, arm)())
                now = time.perf_counter()
                if i >= 1 and now - t_start + (now - t_pair) > TIME_BUDGET_S:
                    logging.getLogger(__name__).warning(
                        "machine busy: stopping after %d pairs of %d to stay within %.0f s",
                        i + 1,
                        repeats,
                        TIME_BUDGET_S,
                    )
                    break
    finally:
        core.close()

    def col(arm: str, key: str) -> list[float]:
        return [r[key] for r in runs[arm]]

    n = bench.n_tiles
    cs_rate, bare_rate = _rate(n, col("cordscope", "total_s")), _rate(n, col("bare", "total_s"))
    cs_scan_rate, bare_scan_rate = _rate(n, col("cordscope", "scan_s")), _rate(n, col("bare", "scan_s"))
    pair_ratios = [b / a for a, b in zip(col("cordscope", "total_s"), col("bare", "total_s"), strict=True)]

    def rounded(values: list[float]) -> list[float]:
        return [round(v, 3) for v in values]

    ratio = cs_rate / bare_rate
    an_rate = _rate(n, col("analysis", "total_s"))
    fsync_rate = _rate(n, col("fsync", "total_s"))
    cs_cpu_ms = statistics.median(col("cordscope", "cpu_s")) / n * 1e3
    bare_cpu_ms = statistics.median(col("bare", "cpu_s")) / n * 1e3
    return {
        "benchmark": "scan_throughput",
        "tile_px": TILE_PX,
        "tiles": n,
        "channels": bench.n_channels,
        "sections": len(section_ids),
        "cordscope_tiles_per_s": round(cs_rate, 3),
        "bare_pymmcore_h5py_tiles_per_s": round(bare_rate, 3),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": bool(ratio >= TARGET_RATIO),
        "with_analysis_tiles_per_s": round(an_rate, 3),
        "ratio_with_analysis": round(an_rate / bare_rate, 3),
        "meets_target_with_analysis": bool(an_rate / bare_rate >= TARGET_RATIO),
        "analysis_finalize_s_median": round(statistics.median(col("analysis", "finalize_s")), 2),
        "fsync_per_tile_tiles_per_s": round(fsync_rate, 3),
        "fsync_per_tile_vs_off": round(fsync_rate / cs_rate, 3),
        "fsync_runs_s": rounded(col("fsync", "total_s")),
        "tiles_analysed_live_median": statistics.median(col("analysis", "analysed_live")),
        "pair_ratios": rounded(pair_ratios),
        "pair_ratio_median": round(statistics.median(pair_ratios), 3),
        "cordscope_scan_only_tiles_per_s": round(cs_scan_rate, 3),
        "bare_scan_only_tiles_per_s": round(bare_scan_rate, 3),
        "scan_only_ratio": round(cs_scan_rate / bare_scan_rate, 3),
        "cordscope_prepare_s_median": round(statistics.median(col("cordscope", "prepare_s")), 3),
        "bare_prepare_s_median": round(statistics.median(col("bare", "prepare_s")), 3),
        "cordscope_cpu_ms_per_tile": round(cs_cpu_ms, 1),
        "bare_cpu_ms_per_tile": round(bare_cpu_ms, 1),
        "cpu_ratio": round(bare_cpu_ms / cs_cpu_ms, 3),
        "repeats": len(runs["cordscope"]),
        "cordscope_runs_s": rounded(col("cordscope", "total_s")),
        "bare_runs_s": rounded(col("bare", "total_s")),
        "cordscope_scan_runs_s": rounded(col("cordscope", "scan_s")),
        "bare_scan_runs_s": rounded(col("bare", "scan_s")),
        "exposure_ms": EXPOSURE_MS,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pymmcore-plus").setLevel(logging.ERROR)
    logging.getLogger("h5py").setLevel(logging.WARNING)
    n_repeats = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_REPEATS
    with stdout_to_stderr():
        row = main(n_repeats)
    print(json.dumps(row))
