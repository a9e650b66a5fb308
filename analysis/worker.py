"""Streaming analysis of a scan: a runner output with its own thread, and the same analysis offline.

Live
----
:class:`AnalysisWorker` is an extra output of the scan controller (an
object with pymmcore-plus' ``sequenceStarted`` / ``frameReady`` /
``sequenceFinished``). Its ``frameReady`` runs on the runner's relay thread,
after the scan writer has stored the frame, and only collects the frames of
the current tile; once a tile has all its channel × z frames it is put on a
bounded queue with ``put_nowait``. If the queue is full the tile is *not*
waited for: it is remembered as skipped, and the worker thread reads it back
from the scan file later (when it has caught up, and at the end). A set of
analysed tiles makes every done tile analysed exactly once.

The worker thread corrects, segments, places and registers each tile
(:class:`~analysis.section_analysis.SectionAnalysis`) and publishes
``maps_updated(section_id, rows)`` at most every
:data:`MIN_UPDATE_INTERVAL_S` (updates in between are coalesced). An
exception while analysing a tile is logged with the tile, counted in
:attr:`AnalysisWorker.faults` and the worker goes on.

Memory: only the sections being scanned stay in memory. When the scan
moves on, a finished section's state (per-cell sums and mosaic, a few tens
of bytes per 4 µm cell) and its current results are set aside in a
temporary HDF5 file and brought back if one of its tiles still arrives (a
re-read); full-resolution tiles are never kept, beyond the raw anatomy
channel of the few tiles whose registration neighbours are still to come.

The scan writer owns the HDF5 file for writing during the scan (one writer
per file), so the worker only reads while the scan runs. The caller runs
:meth:`AnalysisWorker.finalize` *after* the scan has ended (the controller
closed the file): section by section it analyses any done tile still
missing, computes the final results and writes the section's ``analysis/``
group, then writes ``<scan>.regions.csv`` beside the file.

Settings come from the plan's ``analysis:`` mapping
(:class:`~analysis.settings.AnalysisSettings`), or are given explicitly.

Offline
-------
:func:`analyze_scan` feeds every done tile of a finished file through the
same ``SectionAnalysis``, in tile-index order, section by section, and
writes the same outputs. Live and offline tables are identical: each
tile's contributions are rounded to dyadic grids before they are added (so
the sums do not depend on the order tiles arrived in), and each registration
pair is measured once from the two tiles' pixels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from psygnal import Signal, SignalGroup

from acquisition.storage import ScanFile, SectionReader, TileStatus
from analysis.maps import RegionRow
from analysis.regions import SectionRegions
from analysis.results_format import region_csv_path, write_scan_region_csv
from analysis.section_analysis import (
    LiveSnapshot,
    SectionAnalysis,
    SectionResults,
    channel_roles,
    saved_snapshot,
)
from analysis.settings import AnalysisSettings, analysis_settings_from_plan, load_flat_fields

__all__ = [
    "MIN_UPDATE_INTERVAL_S",
    "REGIONS_REFRESH_S",
    "AnalysisEvents",
    "AnalysisWorker",
    "LiveSnapshot",
    "SectionAnalysis",
    "SectionResults",
    "analyze_scan",
    "analyze_section_into",
    "channel_roles",
    "merge_section_results",
    "region_csv_path",
]

logger = logging.getLogger(__name__)

#: Shortest time between two ``maps_updated`` emissions of one worker (s): ≤ 10 per second.
MIN_UPDATE_INTERVAL_S = 0.1

#: Live region masks (the slow part of a table) are recomputed at most this often (s),
#: and never more often than every 5× the time they take; tables in between use the last masks.
REGIONS_REFRESH_S = 1.0

#: Sections kept in memory at once by the live worker (the others are set aside on disk).
SECTIONS_IN_MEMORY = 1

TileKey = tuple[str, int]


class AnalysisEvents(SignalGroup):
    """Signals of an AnalysisWorker: ``maps_updated`` from its thread, ``finished`` from ``finalize``."""

    maps_updated = Signal(str, list)
    """``(section_id, rows)``: the section's region table (list of RegionRow) changed; ≤ 10 Hz.

    Live tables use region masks refreshed every :data:`REGIONS_REFRESH_S` or so;
    the final table (:meth:`AnalysisWorker.finalize`) uses masks of the whole section.
    """
    finished = Signal()
    """The worker analysed every tile it will analyse (emitted by :meth:`AnalysisWorker.finalize`)."""


def _new_section(
    reader: SectionReader,
    plan_yaml: str,
    settings: AnalysisSettings,
    *,
    plan_dir: Path | None,
    read_tile: Callable[[int], np.ndarray | None] | None,
) -> SectionAnalysis:
    """A section's analysis from the scan file; relative flat-field paths are taken from ``plan_dir``."""
    flats = load_flat_fields(
        settings, reader.channel_names, tile_shape=reader.tile_shape_px, base_dir=plan_dir
    )
    return SectionAnalysis.from_reader(
        reader, plan_yaml=plan_yaml, settings=settings, flat_fields=flats, read_tile=read_tile
    )


def _done_tile_reader(scan: ScanFile, section_id: str) -> Callable[[int], np.ndarray | None]:
    def read(tile_index: int) -> np.ndarray | None:
        sec = scan.section(section_id)
        if sec.tile_status[tile_index] != TileStatus.DONE:
            return None
        return sec.read_tile(tile_index)

    return read


def _settings_of(scan: ScanFile, settings: AnalysisSettings | None) -> AnalysisSettings:
    return settings if settings is not None else analysis_settings_from_plan(scan.plan_yaml)


def _write_section(path_or_file: h5py.File, section: SectionAnalysis) -> SectionResults | None:
    """Compute a section's final results and write them; None (with a warning) if it shows no tissue."""
    try:
        results = section.results()
    except ValueError as e:  # e.g. no tissue in the tiles imaged so far
        n = len(section.tiles_added)
        logger.warning("section %s: no analysis (%s) from %d analysed tiles", section.section_id, e, n)
        return None
    group = path_or_file["sections"][section.section_id].require_group("analysis")
    section.write(group, results)
    return results


# ---------------------------------------------------------------- live worker


@dataclasses.dataclass(frozen=True)
class AnalysisFault:
    """An exception met while analysing one tile."""

    section_id: str
    tile_index: int
    message: str


_STOP = object()


class AnalysisWorker:
    """Live analysis beside acquisition: a runner output feeding a bounded queue and its own thread.

    Pass it to ``ScanController(core, plan, extra_outputs=[worker])``; it
    starts its thread at ``sequenceStarted`` (or call :meth:`start`). After
    the scan has ended and closed the file, call :meth:`finalize` to analyse
    what is left, write the ``analysis/`` groups and the region CSV::

        worker = AnalysisWorker(plan.output)
        ScanController(core, plan, extra_outputs=[worker]).run()
        tables = worker.finalize()

    Parameters
    ----------
    scan_path : path
        The scan file being written.
    settings : AnalysisSettings, optional
        Default: the plan's ``analysis:`` settings, read from the scan file.
    queue_size : int
        Complete tiles waiting for analysis; beyond, tiles are re-read from the file later.
    sections_in_memory : int
        Sections kept in memory; the least recently fed others are set aside on disk.

    Attributes
    ----------
    events : AnalysisEvents
    analysis_counts : Counter of (section_id, tile_index)
        How many times each tile was analysed (1 for every done tile).
    skipped : int
        Tiles that did not fit in the queue (re-read from the file).
    faults : list of AnalysisFault
    n_updates : int
        ``maps_updated`` emissions.
    n_set_aside : int
        Times a section's state was moved to disk.
    """

    def __init__(
        self,
        scan_path: str | Path,
        *,
        settings: AnalysisSettings | None = None,
        queue_size: int = 8,
        sections_in_memory: int = SECTIONS_IN_MEMORY,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be ≥ 1, got {queue_size}")
        if sections_in_memory < 1:
            raise ValueError(f"sections_in_memory must be ≥ 1, got {sections_in_memory}")
        self.scan_path = Path(scan_path)
        #: Open the scan file for reading as another process's reader does (no lock; see ScanFile.open).
        self.reads_beside_writer = False
        self._given_settings = settings
        self.settings: AnalysisSettings | None = settings
        self.sections_in_memory = int(sections_in_memory)
        self.events = AnalysisEvents()
        self.analysis_counts: Counter[TileKey] = Counter()
        self.skipped = 0
        self.faults: list[AnalysisFault] = []
        self.n_updates = 0
        self.n_set_aside = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._frames: dict[TileKey, dict[tuple[int, int], np.ndarray]] = {}
        self._frames_per_tile = (1, 1)
        self._to_reread: set[TileKey] = set()
        self._reread_lock = threading.Lock()
        self._analysed: set[TileKey] = set()
        # sections in memory, most recently fed last; set-aside ones live in the spill file
        self._sections: dict[str, SectionAnalysis] = {}
        self._set_aside: set[str] = set()
        self._finalized: set[str] = set()
        self._sections_lock = threading.RLock()
        self._spill: h5py.File | None = None
        self._spill_path: Path | None = None
        self._scan: ScanFile | None = None
        self._thread: threading.Thread | None = None
        self._dirty: dict[str, None] = {}  # ordered set of sections with unpublished changes
        self._last_update = -np.inf
        # live region masks per section: (regions, when computed, how long it took)
        self._live_regions: dict[str, tuple[SectionRegions, float, float]] = {}
        self._tables: dict[str, list[RegionRow]] | None = None

    # ---------------------------------------------------------- runner output

    def sequenceStarted(self, sequence: Any, meta: Any = None) -> None:
        """Start the worker thread (if not started yet)."""
        self._frames.clear()
        self._frames_per_tile = _frames_per_tile(sequence)
        if self._thread is None:
            self.start()

    def frameReady(self, img: np.ndarray, event: Any, meta: Any = None) -> None:
        """Collect one frame; queue its tile once complete, or remember it for re-reading. Never blocks."""
        where = frame_of(event)
        if where is None:
            return
        key, c, z = where
        frames = self._frames.setdefault(key, {})
        frames[(c, z)] = img
        n_c, n_z = self._frames_per_tile
        if len(frames) < n_c * n_z:
            return
        del self._frames[key]
        tile = np.stack([np.stack([frames[(ci, zi)] for zi in range(n_z)]) for ci in range(n_c)])
        try:
            self._queue.put_nowait((key, tile))
        except queue.Full:
            self.skipped += 1
            with self._reread_lock:
                self._to_reread.add(key)

    def sequenceFinished(self, sequence: Any) -> None:
        """Tiles still collecting frames are dropped (not done); the thread goes on with the queue."""
        self._frames.clear()

    # ---------------------------------------------------------------- control

    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="cordscope-analysis", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish: it analyses what is queued and the tiles to re-read, then ends."""
        if self._thread is None:
            return
        self._queue.put(_STOP)  # may wait for the worker to take a tile: never called from the runner

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the thread to end (after :meth:`stop`)."""
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"analysis still running after {timeout_s} s")

    def finalize(self, *, timeout_s: float | None = None) -> dict[str, list[RegionRow]]:
        """After the scan: finish, analyse done tiles still missing, write results; return the tables.

        Must be called once the scan controller has closed the file (e.g.
        after ``ScanController.run()`` returned). Section by section (one in
        memory at a time), it writes ``sections/<id>/analysis/``, then
        ``<scan>.regions.csv``, and emits ``events.finished``.
        """
        self.stop()
        self.join(timeout_s)
        tables: dict[str, list[RegionRow]] = {}
        try:
            with h5py.File(self.scan_path, "r+") as f:
                # one handle for reading tiles and writing results (no second open of the file)
                scan = ScanFile(f, self.scan_path, int(f.attrs["format_version"]))
                self._scan = scan
                try:
                    for sid in scan.section_ids:
                        for t in scan.section(sid).done_indices():
                            self._analyse_from_file((sid, int(t)))
                        section = self._section(sid)
                        section.read_tile = _done_tile_reader(scan, sid)
                        results = _write_section(f, section)
                        if results is not None:
                            tables[sid] = results.table
                        with self._sections_lock:
                            self._sections.pop(sid, None)
                            self._live_regions.pop(sid, None)
                            self._finalized.add(sid)
                finally:
                    self._scan = None
            write_scan_region_csv(self.scan_path)
        finally:
            self._close_spill()
        self._tables = tables
        self.events.finished.emit()
        return tables

    @property
    def section_ids(self) -> list[str]:
        """Sections with at least one tile analysed (in memory, set aside, or finalized)."""
        with self._sections_lock:
            return [*self._finalized, *sorted(self._set_aside), *self._sections]

    def section(self, section_id: str) -> SectionAnalysis:
        """The running analysis of a section in memory (its mosaic, accumulator, settings).

        Raises
        ------
        KeyError
            If the section is not in memory (set aside on disk, finalized or never fed).
        """
        with self._sections_lock:
            return self._sections[section_id]

    def snapshot(self, section_id: str) -> LiveSnapshot | None:
        """A thread-safe copy of one section's mosaic, heatmap, region masks and table.

        For a viewer polling on a timer (e.g. the GUI at a few Hz, from any
        thread): mosaics and maps are copies; the masks are the latest live
        ones, or the final ones once the section is finalized (read from the
        scan file) or set aside (read from the worker's temporary file).
        Costs a few ms for a coronal section in memory. Returns None if no
        tile of the section was analysed yet.
        """
        with self._sections_lock:
            section = self._sections.get(section_id)
            if section is not None:
                live = self._live_regions.get(section_id)
                return section.snapshot(None if live is None else live[0])
            if section_id in self._set_aside and self._spill is not None:
                if "results" not in self._spill[section_id]:
                    return None
                return saved_snapshot(self._spill[section_id]["results"], section_id)
            if section_id in self._finalized:
                with h5py.File(self.scan_path, "r") as f:
                    group = f["sections"][section_id].get("analysis")
                    if group is None:
                        return None
                    return saved_snapshot(group, section_id)
        return None

    @property
    def analysed_tiles(self) -> set[TileKey]:
        """Tiles analysed so far."""
        return set(self._analysed)

    # ------------------------------------------------------------- the thread

    def _run(self) -> None:
        _lower_this_threads_priority()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=MIN_UPDATE_INTERVAL_S / 2)
                except queue.Empty:
                    # caught up: read back skipped tiles, publish coalesced updates
                    if not self._reread_one():
                        self._publish()
                    continue
                if item is _STOP:
                    break
                key, tile = item
                self._analyse(key, lambda tile=tile: tile)
                self._publish()
            self._reread_all()
            self._publish()
        finally:
            if self._scan is not None:
                self._scan.close()
                self._scan = None

    def _reread_all(self) -> None:
        while self._to_reread:
            self._reread_one()

    def _reread_one(self) -> bool:
        with self._reread_lock:
            if not self._to_reread:
                return False
            key = min(self._to_reread)
            self._to_reread.discard(key)
        self._analyse_from_file(key)
        self._publish()
        return True

    def _open_scan(self) -> ScanFile:
        if self._scan is None:
            self._scan = ScanFile.open(self.scan_path, beside_writer=self.reads_beside_writer)
        return self._scan

    def _analyse_from_file(self, key: TileKey) -> None:
        if key in self._analysed:
            return

        def read() -> np.ndarray | None:
            return _done_tile_reader(self._open_scan(), key[0])(key[1])

        self._analyse(key, read)

    def _section(self, section_id: str) -> SectionAnalysis:
        """The section's state in memory: made, or brought back from disk; others set aside."""
        with self._sections_lock:
            section = self._sections.pop(section_id, None)
        if section is None:
            scan = self._open_scan()
            if self.settings is None:
                self.settings = _settings_of(scan, self._given_settings)
            reader = scan.section(section_id)
            section = _new_section(
                reader,
                scan.plan_yaml,
                self.settings,
                plan_dir=self.scan_path.parent,
                read_tile=_done_tile_reader(scan, section_id),
            )
            if section_id in self._set_aside:
                assert self._spill is not None
                section.load_state(self._spill[section_id]["state"])
        with self._sections_lock:
            self._sections[section_id] = section  # most recently used last
            self._set_aside.discard(section_id)
            while len(self._sections) > self.sections_in_memory:
                oldest = next(iter(self._sections))
                self._set_aside_section(oldest)
        return section

    def _set_aside_section(self, section_id: str) -> None:
        """Move a section's state (and its current results, for snapshots) to the spill file."""
        section = self._sections[section_id]
        spill = self._spill_file()
        if section_id in spill:
            del spill[section_id]
        group = spill.create_group(section_id)
        section.save_state(group.create_group("state"))
        try:
            res = section.results(final=False)
        except ValueError as e:  # no tissue yet: no results to show, the state is kept
            logger.debug("section %s set aside without results: %s", section_id, e)
        else:
            section.write(group.create_group("results"), res)
        spill.flush()
        del self._sections[section_id]
        self._live_regions.pop(section_id, None)
        self._set_aside.add(section_id)
        self.n_set_aside += 1

    def _spill_file(self) -> h5py.File:
        if self._spill is None:
            fd, name = tempfile.mkstemp(prefix=f".{self.scan_path.stem}-analysis-", suffix=".h5")
            os.close(fd)
            self._spill_path = Path(name)
            self._spill = h5py.File(self._spill_path, "w")
        return self._spill

    def _close_spill(self) -> None:
        with self._sections_lock:
            if self._spill is not None:
                self._spill.close()
                self._spill = None
            if self._spill_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._spill_path.unlink()
                self._spill_path = None
            self._set_aside.clear()

    def _analyse(self, key: TileKey, get_tile: Any) -> None:
        sid, t = key
        if key in self._analysed:
            return
        try:
            tile = get_tile()
            if tile is None:
                return  # not done (yet): nothing to analyse
            self._section(sid).add_tile(tile, tile_index=t)
        except Exception as e:  # an analysis fault never stops the scan
            logger.exception("analysis of tile %s/%s failed", sid, t)
            self.faults.append(AnalysisFault(sid, t, f"{type(e).__name__}: {e}"))
        # a tile is analysed once, even when its analysis failed (it is not retried)
        self._analysed.add(key)
        self.analysis_counts[key] += 1
        self._dirty[sid] = None

    def _publish(self) -> None:
        if not self._dirty:
            return
        now = time.monotonic()
        if now - self._last_update < MIN_UPDATE_INTERVAL_S:
            return
        sid = next(iter(self._dirty))
        del self._dirty[sid]
        self._last_update = now
        with self._sections_lock:
            section = self._sections.get(sid)
        if section is None:
            return  # set aside meanwhile: its results were computed then
        try:
            regions = self._live_regions.get(sid)
            if regions is None or now - regions[1] >= max(REGIONS_REFRESH_S, 5 * regions[2]):
                t0 = time.monotonic()
                masks = section.regions()
                regions = (masks, t0, time.monotonic() - t0)
                with self._sections_lock:
                    self._live_regions[sid] = regions
            rows = section.table(regions[0])
        except ValueError as e:  # e.g. no tissue in the first tiles yet
            logger.debug("no live region table for section %s yet: %s", sid, e)
            return
        except Exception:
            logger.exception("live region table of section %s failed", sid)
            return
        self.n_updates += 1
        # the interval counts from the emission: computing the masks may have taken a while
        self._last_update = time.monotonic()
        self.events.maps_updated.emit(sid, rows)


#: Nice value of the analysis thread (Linux: per thread): when both want the CPU, acquisition wins.
ANALYSIS_THREAD_NICE = 10


def _lower_this_threads_priority() -> None:
    """Run the calling thread at :data:`ANALYSIS_THREAD_NICE` where the OS allows a per-thread nice."""
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(current, ANALYSIS_THREAD_NICE))
    except OSError as e:  # not permitted, or not Linux semantics: run at normal priority
        logger.debug("analysis thread keeps its priority: %s", e)


def frame_of(event: Any) -> tuple[TileKey, int, int] | None:
    """(tile, channel, plane) of an MDA event named ``<section>/<tile>``; None (logged) otherwise."""
    name = event.pos_name or ""
    sid, _, index = name.rpartition("/")
    if not sid or not index.isdigit():
        logger.error("frame of stage position %r ignored: not named '<section>/<tile>'", name)
        return None
    return (sid, int(index)), int(event.index.get("c", 0)), int(event.index.get("z", 0))


def _frames_per_tile(sequence: Any) -> tuple[int, int]:
    """(channels, planes) per tile of an MDA sequence (read duck-typed: no useq import)."""
    n_c = max(1, len(getattr(sequence, "channels", ()) or ()))
    z_plan = getattr(sequence, "z_plan", None)
    n_z = max(1, len(list(z_plan))) if z_plan is not None else 1
    return n_c, n_z


# ---------------------------------------------------------------- offline


def analyze_scan(path: str | Path, *, settings: AnalysisSettings | None = None) -> dict[str, list[RegionRow]]:
    """Rerun the analysis of a finished scan file; write its ``analysis/`` groups and region CSV.

    Every done tile is fed through :class:`SectionAnalysis` in tile-index
    order, one section at a time: the same code and numbers as the live
    :class:`AnalysisWorker`. A tile whose analysis raises is logged with its
    id and left out.

    Parameters
    ----------
    path : path of the scan file (not open for writing elsewhere)
    settings : AnalysisSettings, optional
        Default: the plan's ``analysis:`` settings stored in the file.

    Returns
    -------
    dict of section id → list of RegionRow
    """
    path = Path(path)
    tables: dict[str, list[RegionRow]] = {}
    with ScanFile.open(path) as scan:  # checks the format and says what is wrong
        chosen = _settings_of(scan, settings)
    with h5py.File(path, "r+") as f:
        scan = ScanFile(f, path, int(f.attrs["format_version"]))
        plan_yaml = scan.plan_yaml
        for sid in scan.section_ids:
            reader = scan.section(sid)
            sec = _new_section(
                reader, plan_yaml, chosen, plan_dir=path.parent, read_tile=_done_tile_reader(scan, sid)
            )
            for t in reader.done_indices():
                try:
                    sec.add_tile(reader.read_tile(int(t)), tile_index=int(t))
                except Exception:
                    logger.exception("analysis of tile %s/%s failed", sid, int(t))
            results = _write_section(f, sec)
            if results is not None:
                tables[sid] = results.table
    write_scan_region_csv(path)
    return tables


def analyze_section_into(
    path: str | Path, section_id: str, out_path: str | Path, *, settings: AnalysisSettings | None = None
) -> list[RegionRow] | None:
    """Analyse one section of a finished scan, opened read-only; write its results into ``out_path``.

    For parallel re-analysis (:func:`analysis.distributed.analyze_many`): the
    scan file is only read, and the section's ``analysis`` group is written
    into a new HDF5 file ``out_path`` (group ``/analysis``), which
    :func:`merge_section_results` copies into the scan file. The numbers are
    those of :func:`analyze_scan` (same code, tile-index order).

    Returns
    -------
    The section's region table, or None (with a warning) if it shows no tissue.
    """
    path = Path(path)
    with ScanFile.open(path) as scan:
        chosen = _settings_of(scan, settings)
        reader = scan.section(section_id)
        sec = _new_section(
            reader,
            scan.plan_yaml,
            chosen,
            plan_dir=path.parent,
            read_tile=_done_tile_reader(scan, section_id),
        )
        for t in reader.done_indices():
            try:
                sec.add_tile(reader.read_tile(int(t)), tile_index=int(t))
            except Exception:
                logger.exception("analysis of tile %s/%s failed", section_id, int(t))
        try:
            results = sec.results()
        except ValueError as e:
            logger.warning(
                "section %s: no analysis (%s) from %d analysed tiles", section_id, e, len(sec.tiles_added)
            )
            return None
    with h5py.File(out_path, "w") as out:
        sec.write(out.create_group("analysis"), results)
    return results.table


def merge_section_results(
    path: str | Path, parts: Mapping[str, Path | None], tables: Mapping[str, list[RegionRow]]
) -> Path:
    """Copy sections' results written by :func:`analyze_section_into` into the scan file; write its CSV.

    Parameters
    ----------
    path : the scan file (opened for writing here, by this process only)
    parts : section id → the file its results were written to (None: no results)
    tables : section id → region table, in the file's section order

    Returns
    -------
    The region CSV written beside the scan file.
    """
    with h5py.File(path, "r+") as f:
        for sid, part in parts.items():
            if part is None:
                continue
            group = f["sections"][sid]
            if "analysis" in group:
                del group["analysis"]
            with h5py.File(part, "r") as src:
                src.copy(src["analysis"], group, name="analysis")
    return write_scan_region_csv(path)
