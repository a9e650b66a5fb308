"""Re-analyse many scan files in parallel with Dask: one task per file, each in its own worker process.

:func:`analyze_many` runs :func:`analysis.worker.analyze_scan` on every file,
either on a local cluster it starts (``workers`` processes, one thread each)
or on an existing Dask cluster (``scheduler`` address; its workers must see
the files at the same paths, e.g. on a shared disk). A task opens only its
own file, so no file is ever open in two processes, and it runs exactly the
code of a serial ``analyze_scan`` (deterministic, tile-index order), so the
tables, the ``analysis/`` groups and the CSVs are identical to a serial run
(``tests/analysis/test_distributed.py`` compares them exactly).

Files are submitted largest first so that one big file does not finish
last on its own; results come back in the order of ``paths``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from analysis.maps import RegionRow
from analysis.worker import analyze_scan

__all__ = ["analyze_many", "analyze_serial"]

logger = logging.getLogger(__name__)

FileTables = dict[str, list[RegionRow]]


def _analyze_one(path: str, options: Mapping[str, Any]) -> FileTables:
    return analyze_scan(path, **options)


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
        Keyword options of :func:`analysis.worker.analyze_scan` (default: its defaults).
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
                silence_logs=logging.ERROR,
            )
        client = Client(cluster)
    results: dict[Path, FileTables] = {}
    try:
        order = sorted(resolved, key=lambda p: p.stat().st_size if p.exists() else 0, reverse=True)
        futures = {
            client.submit(_analyze_one, str(p), opts, key=f"analyze-{i}-{p.name}", pure=False): p
            for i, p in enumerate(order)
        }
        for future in as_completed(futures):
            path = futures[future]
            results[path] = future.result()
            if on_file is not None:
                on_file(path, results[path])
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return {p: results[p] for p in resolved}
