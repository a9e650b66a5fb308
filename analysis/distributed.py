"""Re-analyse many scan files in parallel with Dask: one task per section, each in a worker process.

:func:`analyze_many` analyses every section of every file as its own task,
either on a local cluster it starts (``workers`` processes, one thread each)
or on an existing Dask cluster (``scheduler`` address; its workers must see
the files at the same paths, e.g. on a shared disk). A task opens its scan
file read-only and writes the section's results into a file of its own
(:func:`analysis.scan_analysis.analyze_section_into`, in a temporary folder beside
the scan); when all sections of a file are done, this process copies them
into the scan file and writes its CSV (:func:`analysis.scan_analysis.merge_section_results`).
It runs exactly the code of a serial ``analyze_scan`` (deterministic,
tile-index order), so the tables, the ``analysis/`` groups and the CSVs are
identical to a serial run (``tests/analysis/test_distributed.py`` compares
them exactly).

Sections are submitted largest first so that one big section does not
finish last on its own; results come back in the order of ``paths``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from acquisition.storage import ScanFile
from analysis.maps import RegionRow
from analysis.scan_analysis import analyze_scan, analyze_section_into, merge_section_results

__all__ = ["analyze_many", "analyze_serial"]

logger = logging.getLogger(__name__)

FileTables = dict[str, list[RegionRow]]


def _analyze_one(path: str, options: Mapping[str, Any]) -> FileTables:
    return analyze_scan(path, **options)


def _analyze_section_task(
    path: str, section_id: str, out_path: str, options: Mapping[str, Any]
) -> list[RegionRow] | None:
    return analyze_section_into(path, section_id, out_path, **options)


def _section_sizes(path: Path) -> dict[str, int]:
    """Section id → planned tiles, in the file's section order (read-only)."""
    with ScanFile.open(path) as scan:
        return {sid: scan.section(sid).n_tiles for sid in scan.section_ids}


def _merge(
    path: Path, order: list[str], tables: Mapping[str, list[RegionRow] | None], parts: Mapping[str, Path]
) -> FileTables:
    """Write the sections' results into the scan file (from this process only); return its tables."""
    kept: FileTables = {sid: t for sid in order if (t := tables[sid]) is not None}
    merge_section_results(path, {sid: parts[sid] if sid in kept else None for sid in order})
    return kept


def analyze_serial(
    paths: Sequence[str | Path],
    *,
    options: Mapping[str, Any] | None = None,
    on_file: Callable[[Path, FileTables], None] | None = None,
) -> dict[Path, FileTables]:
    """Re-analyse the files one after the other in this process (the reference for :func:`analyze_many`)."""
    out: dict[Path, FileTables] = {}
    for p in paths:
        path = Path(p)
        out[path] = _analyze_one(str(path), dict(options or {}))
        if on_file is not None:
            on_file(path, out[path])
    return out


def analyze_many(
    paths: Sequence[str | Path],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    options: Mapping[str, Any] | None = None,
    on_file: Callable[[Path, FileTables], None] | None = None,
) -> dict[Path, FileTables]:
    """Re-analyse scan files in parallel with Dask, one task (and one process) per file.

    Parameters
    ----------
    paths : scan files (each at most once)
    workers : int, optional
        Worker processes of a local cluster started for this call (default: the
        number of CPUs). Ignored with ``scheduler``.
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://host:8786``) to use instead.
    options : mapping, optional
        Keyword options of :func:`analysis.scan_analysis.analyze_scan` (default: its defaults).
    on_file : callable, optional
        Called in this process as each file finishes, with (path, its tables).

    Returns
    -------
    dict of path → (section id → list of RegionRow), in the order of ``paths``

    Raises
    ------
    ValueError
        Duplicate paths, or ``workers < 1``.
    Exception
        The first task's error (e.g. :class:`acquisition.storage.StorageError` naming the file).
    """
    import dask
    from dask.distributed import Client, LocalCluster, as_completed

    resolved = [Path(p).resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise ValueError("a scan file is listed twice; each file can be analysed by one task only")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    opts = dict(options or {})
    if scheduler is not None:
        client = Client(scheduler)
        cluster = None
    else:
        n = workers or os.cpu_count() or 1
        # Dask sets MALLOC_TRIM_THRESHOLD_=65536 in its worker processes; setting it at all freezes
        # glibc's mmap threshold at 128 KiB, so every large numpy temporary is mmapped and page-faulted
        # afresh: the analysis ran ~1.5x slower per file in a worker than in this process. Keep glibc's
        # adaptive default (a value in the environment still wins).
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                # the scheduler serves HTTP (health, metrics) even without a dashboard, on 8787 by
                # default: another cluster there (a second analysis, a lab's own Dask) must not clash
                scheduler_kwargs={"dashboard_address": ":0"},
                silence_logs=logging.ERROR,
            )
        client = Client(cluster)
    results: dict[Path, FileTables] = {}
    try:
        # one task per section (45 for the demo cohort rather than 15 files: the two workers
        # finish together); each task reads its scan read-only and writes only a file of its own
        sections = {p: _section_sizes(p) for p in resolved}
        parts_dirs = {
            p: Path(tempfile.mkdtemp(prefix=f".{p.stem}.analysis-parts-", dir=p.parent)) for p in resolved
        }
        jobs = sorted(
            ((p, sid, n) for p, sizes in sections.items() for sid, n in sizes.items()),
            key=lambda job: -job[2],
        )
        futures = {
            client.submit(
                _analyze_section_task,
                str(p),
                sid,
                str(parts_dirs[p] / f"{i}.h5"),
                opts,
                key=f"analyze-{i}-{p.name}-{sid}",
                pure=False,
            ): (p, sid, parts_dirs[p] / f"{i}.h5")
            for i, (p, sid, _n) in enumerate(jobs)
        }
        done: dict[Path, dict[str, list[RegionRow] | None]] = {p: {} for p in resolved}
        part_files: dict[Path, dict[str, Path]] = {p: {} for p in resolved}
        try:
            for future in as_completed(futures):
                path, sid, part = futures[future]
                done[path][sid] = future.result()
                part_files[path][sid] = part
                if len(done[path]) == len(sections[path]):
                    results[path] = _merge(path, list(sections[path]), done[path], part_files[path])
                    if on_file is not None:
                        on_file(path, results[path])
        finally:
            for folder in parts_dirs.values():
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return {p: results[p] for p in resolved}
