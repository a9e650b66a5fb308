"""Re-analysis of the demo cohort: serial vs two Dask worker processes.

Re-analyses every scan file of the demo cohort (``make demo-study`` writes it
to ``demo-study-output/scans``; without it, a cohort of 5 animals per group is
scanned first into a temporary folder) once serially in this process and once
with ``analyze_many(workers=2)`` (a local cluster of two single-threaded
worker processes, started inside the timed call), each on its own fresh copy
of the files. Numerics are single-threaded everywhere (OMP/BLAS threads = 1)
so the comparison is between processes, not BLAS threads. The results of the
two runs are checked to be identical. Prints one JSON line with both wall
times and their ratio; the machine may be shared, so the line also gives the
1-minute load average and the parallel capacity measured just before (how
many CPUs' worth of pure-Python work two processes got: 2.0 on an idle
2-core machine, ~1.0 when other jobs take the rest); the numbers are what
was measured.

Run: ``.venv/bin/python benchmarks/bench_distributed_analysis.py [SCAN_DIR]``
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# before numpy is imported (in main), here and in the worker processes (they inherit the environment)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

TARGET_SPEEDUP = 1.7
DEFAULT_SCANS = Path("demo-study-output/scans")


def _copies(files: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    out = []
    for f in files:
        shutil.copyfile(f, folder / f.name)
        out.append(folder / f.name)
    return out


def _busy(_: object = None) -> float:
    t = time.perf_counter()
    total = 0
    for i in range(3_000_000):
        total += i
    return time.perf_counter() - t


def parallel_capacity() -> float:
    """How many CPUs' worth of pure-Python work two processes get now (2.0 on an idle 2-core machine)."""
    import multiprocessing

    one = _busy()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_busy, range(2))  # warm up the processes
        t = time.perf_counter()
        pool.map(_busy, range(4), chunksize=1)
        two = time.perf_counter() - t
    return 4 * one / two if two > 0 else float("nan")


def main() -> None:
    from analysis.distributed import analyze_many, analyze_serial

    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp_name:
        tmp = Path(tmp_name)
        scan_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SCANS
        files = sorted(scan_dir.glob("*.h5"))
        scanned_s = None
        if not files:
            from cordscope.cohort import scan_demo_cohort

            t = time.perf_counter()
            files = list(scan_demo_cohort(tmp / "scans", animals_per_group=5).scan_files)
            scanned_s = time.perf_counter() - t
        serial_files = _copies(files, tmp / "serial")
        dask_files = _copies(files, tmp / "dask")
        load = os.getloadavg()[0]
        capacity = parallel_capacity()
        t = time.perf_counter()
        serial = analyze_serial(serial_files)
        serial_s = time.perf_counter() - t
        t = time.perf_counter()
        parallel = analyze_many(dask_files, workers=2)
        workers2_s = time.perf_counter() - t
        identical = [serial[a] for a in serial_files] == [parallel[b.resolve()] for b in dask_files]
        n_sections = sum(len(v) for v in serial.values())
    print(
        json.dumps(
            {
                "benchmark": "distributed_analysis",
                "n_files": len(files),
                "n_sections": n_sections,
                "serial_s": round(serial_s, 2),
                "workers2_s": round(workers2_s, 2),
                "speedup": round(serial_s / workers2_s, 2),
                "target_speedup": TARGET_SPEEDUP,
                "identical_results": identical,
                "cpus": os.cpu_count(),
                "load_avg_1min_before": round(load, 2),
                "parallel_capacity_before": round(capacity, 2),
                "cohort_scanned_s": None if scanned_s is None else round(scanned_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
