"""The live analysis in its own process: acquisition keeps its CPU and its interpreter.

:class:`AnalysisProcess` is a drop-in for :class:`~analysis.worker.AnalysisWorker`
as a runner output (same ``events``, ``snapshot``, ``finalize``). Its
``frameReady`` only counts the frames of each tile; when a tile is complete
(the scan writer has stored and flushed it, and set its status, before the
next output sees the frame) it sends the tile's *name* to a child process.
The child runs an ordinary ``AnalysisWorker`` and reads each tile from the
scan file, which the writer keeps open: such a reader opens the file
read-only without a lock and reads a tile only once its status is done
(:meth:`acquisition.storage.ScanFile.open`). No pixels cross between the
processes.

Why a process: on a 2-core machine, analysing 2048² tiles in a thread
beside the scan slowed acquisition to ~0.8 of a bare pymmcore-plus run
(shared interpreter lock, shared CPU), even with the thread's priority
lowered; in its own process at a lower priority, the analysis uses the
other core and the scan runs at full speed
(``benchmarks/bench_scan_throughput.py``).

Messages (child → parent): ``maps`` (section, rows), ``analysed`` (tile),
``fault``, ``snapshot`` (reply), ``finalized`` (tables) or ``error``. A
snapshot request is answered between two tiles.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import queue
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from analysis.maps import RegionRow
from analysis.section_analysis import LiveSnapshot
from analysis.settings import AnalysisSettings
from analysis.worker import (
    ANALYSIS_THREAD_NICE,
    AnalysisEvents,
    AnalysisFault,
    AnalysisWorker,
    TileKey,
    _frames_per_tile,
    frame_of,
)

__all__ = ["AnalysisProcess", "AnalysisProcessError", "LiveAnalysis"]

logger = logging.getLogger(__name__)

_SNAPSHOT_TIMEOUT_S = 30.0


class _Quit(Exception):
    """Asked to end without writing results."""


class AnalysisProcessError(RuntimeError):
    """The analysis process failed or stopped answering (the message says what happened)."""


def _child_main(
    scan_path: str,
    settings: AnalysisSettings | None,
    tiles: Any,
    requests: Any,
    replies: Any,
) -> None:
    """Body of the analysis process: analyse named tiles from the file, answer requests."""
    try:
        os.nice(ANALYSIS_THREAD_NICE)
    except OSError:
        logger.debug("analysis process keeps its priority")
    worker = AnalysisWorker(scan_path, settings=settings)
    # a reader beside the scan's writer: never holds a lock a resumed scan would meet
    worker.reads_beside_writer = True
    parent = mp.parent_process()
    worker.events.maps_updated.connect(lambda sid, rows: replies.put(("maps", sid, rows)))
    n_faults = 0

    def answer_requests(block_s: float) -> bool:
        """Handle pending requests; True once asked to finalize."""
        try:
            message = requests.get(timeout=block_s) if block_s > 0 else requests.get_nowait()
        except queue.Empty:
            return False
        while True:
            kind = message[0]
            if kind == "snapshot":
                _, req_id, section_id = message
                try:
                    replies.put(("snapshot", req_id, worker.snapshot(section_id), None))
                except Exception as e:  # reported to the caller, the analysis goes on
                    replies.put(("snapshot", req_id, None, f"{type(e).__name__}: {e}"))
            elif kind == "finalize":
                return True
            elif kind == "quit":
                raise _Quit
            try:
                message = requests.get_nowait()
            except queue.Empty:
                return False

    try:
        finalize = False
        while not finalize:
            if parent is not None and not parent.is_alive():
                return  # the scan's process is gone (killed): its file is resumed by a new scan
            finalize = answer_requests(0)
            if finalize:
                break
            try:
                item = tiles.get(timeout=0.05)
            except queue.Empty:
                worker._publish()
                finalize = answer_requests(0.05)
                continue
            key: TileKey = (item[0], int(item[1]))
            worker._analyse_from_file(key)
            if key in worker.analysis_counts:
                replies.put(("analysed", key))
            while len(worker.faults) > n_faults:
                f = worker.faults[n_faults]
                replies.put(("fault", f.section_id, f.tile_index, f.message))
                n_faults += 1
            worker._publish()
        # tiles named but not analysed yet are picked up by finalize (it reads every done tile)
        if worker._scan is not None:
            worker._scan.close()
            worker._scan = None
        tables = worker.finalize()
        for f in worker.faults[n_faults:]:
            replies.put(("fault", f.section_id, f.tile_index, f.message))
        for key in worker.analysis_counts:
            replies.put(("analysed", key))
        replies.put(("finalized", tables, None))
    except _Quit:
        replies.put(("finalized", None, "stopped before the final analysis"))
    except Exception as e:
        logger.exception("analysis process failed")
        replies.put(("finalized", None, f"{type(e).__name__}: {e}"))


class AnalysisProcess:
    """Live analysis in a child process; same use as :class:`~analysis.worker.AnalysisWorker`.

    Parameters
    ----------
    scan_path : path
        The scan file being written.
    settings : AnalysisSettings, optional
        Default: the plan's ``analysis:`` settings, read from the scan file.

    Attributes
    ----------
    events : AnalysisEvents
        ``maps_updated`` (from a listener thread), ``finished`` (from :meth:`finalize`).
    analysis_counts : Counter of (section_id, tile_index)
    faults : list of AnalysisFault
    n_updates : int
    skipped : int
        Always 0: every tile is read from the file by the analysis process.
    """

    def __init__(self, scan_path: str | Path, *, settings: AnalysisSettings | None = None) -> None:
        self.scan_path = Path(scan_path)
        self.settings = settings
        self.events = AnalysisEvents()
        self.analysis_counts: Counter[TileKey] = Counter()
        self.faults: list[AnalysisFault] = []
        self.n_updates = 0
        self.skipped = 0
        self._ctx = mp.get_context("spawn")
        self._tiles: Any = self._ctx.Queue()
        self._requests: Any = self._ctx.Queue()
        self._replies: Any = self._ctx.Queue()
        self._process: Any = None
        self._listener: threading.Thread | None = None
        self._frames: dict[TileKey, set[tuple[int, int]]] = {}
        self._frames_per_tile = (1, 1)
        self._req_ids = itertools.count()
        self._pending: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._lock = threading.Lock()
        self._finalized = threading.Event()
        self._final: tuple[dict[str, list[RegionRow]] | None, str | None] = (None, None)
        self._section_ids: dict[str, None] = {}
        self._finalizing = False

    # ---------------------------------------------------------- runner output

    def sequenceStarted(self, sequence: Any, meta: Any = None) -> None:
        """Start the analysis process (if not started yet)."""
        self._frames.clear()
        self._frames_per_tile = _frames_per_tile(sequence)
        self.start()

    def frameReady(self, img: Any, event: Any, meta: Any = None) -> None:
        """Count one frame; name its tile to the analysis process once complete. Never blocks."""
        where = frame_of(event)
        if where is None:
            return
        key, c, z = where
        sid = key[0]
        seen = self._frames.setdefault(key, set())
        seen.add((c, z))
        n_c, n_z = self._frames_per_tile
        if len(seen) < n_c * n_z:
            return
        del self._frames[key]
        self._section_ids.setdefault(sid)
        self._tiles.put(key)

    def sequenceFinished(self, sequence: Any) -> None:
        """Tiles still collecting frames are dropped (not done)."""
        self._frames.clear()

    # ---------------------------------------------------------------- control

    def start(self) -> None:
        """Start the analysis process and the thread relaying its messages."""
        if self._process is not None:
            return
        self._process = self._ctx.Process(
            target=_child_main,
            args=(str(self.scan_path), self.settings, self._tiles, self._requests, self._replies),
            name="cordscope-analysis",
            daemon=True,
        )
        self._process.start()
        self._listener = threading.Thread(target=self._listen, name="cordscope-analysis-relay", daemon=True)
        self._listener.start()

    def stop(self) -> None:
        """End the analysis process without writing results (e.g. when no tile was acquired)."""
        if self._process is not None and self._process.is_alive():
            self._requests.put(("quit",))

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the analysis process to end (after :meth:`finalize`)."""
        if self._process is not None:
            self._process.join(timeout_s)

    def finalize(self, *, timeout_s: float | None = None) -> dict[str, list[RegionRow]]:
        """After the scan closed the file: finish, write the results (in the process); return the tables.

        Raises
        ------
        AnalysisProcessError
            If the process failed, or did not finish within ``timeout_s``.
        """
        self.start()
        self._finalizing = True
        self._requests.put(("finalize",))
        with self._lock:  # the process answers no snapshot while it writes the results
            pending, self._pending = self._pending, {}
        for done, box in pending.values():
            box.extend([None, None])
            done.set()
        if not self._finalized.wait(timeout_s):
            raise AnalysisProcessError(f"analysis of {self.scan_path.name} not finished after {timeout_s} s")
        self.join(30)
        tables, error = self._final
        if error is not None or tables is None:
            raise AnalysisProcessError(f"analysis of {self.scan_path.name} failed: {error}")
        self.events.finished.emit()
        return tables

    @property
    def section_ids(self) -> list[str]:
        """Sections with at least one tile named to the analysis."""
        return list(self._section_ids)

    @property
    def analysed_tiles(self) -> set[TileKey]:
        """Tiles analysed so far."""
        return set(self.analysis_counts)

    def snapshot(self, section_id: str) -> LiveSnapshot | None:
        """A copy of one section's live (or final) state, from the analysis process.

        Blocks until the process answers (between two tiles): call it off the GUI thread.
        Returns None while :meth:`finalize` writes the results, and reads the
        written results from the file afterwards.

        Raises
        ------
        AnalysisProcessError
            If the process is gone or does not answer within 30 s.
        """
        if self._process is None:
            return None
        if not self._process.is_alive():
            return self._snapshot_after_exit(section_id)
        if self._finalizing:
            return None  # the results are being written: ask again once finalize() returned
        req_id = next(self._req_ids)
        done = threading.Event()
        box: list[Any] = []
        with self._lock:
            self._pending[req_id] = (done, box)
        self._requests.put(("snapshot", req_id, section_id))
        if not done.wait(_SNAPSHOT_TIMEOUT_S):
            with self._lock:
                self._pending.pop(req_id, None)
            if not self._process.is_alive():
                return self._snapshot_after_exit(section_id)
            raise AnalysisProcessError(f"no snapshot of section {section_id} within {_SNAPSHOT_TIMEOUT_S} s")
        snap, error = box
        if error is not None:
            raise AnalysisProcessError(f"snapshot of section {section_id} failed: {error}")
        return snap  # type: ignore[no-any-return]

    def _snapshot_after_exit(self, section_id: str) -> LiveSnapshot | None:
        """Once the process has written the results, snapshots come from the file."""
        import h5py

        from analysis.section_analysis import saved_snapshot

        with h5py.File(self.scan_path, "r") as f:
            group = f["sections"][section_id].get("analysis") if section_id in f["sections"] else None
            return None if group is None else saved_snapshot(group, section_id)

    # ------------------------------------------------------------- listening

    def _listen(self) -> None:
        while True:
            try:
                message = self._replies.get(timeout=0.5)
            except queue.Empty:
                gone = self._process is not None and not self._process.is_alive()
                if gone and not self._finalized.is_set():
                    self._final = (None, f"the analysis process exited (code {self._process.exitcode})")
                    self._finalized.set()
                    return
                continue
            kind = message[0]
            if kind == "maps":
                self.n_updates += 1
                self.events.maps_updated.emit(message[1], message[2])
            elif kind == "analysed":
                self.analysis_counts[message[1]] = 1
            elif kind == "fault":
                self.faults.append(AnalysisFault(message[1], int(message[2]), message[3]))
            elif kind == "snapshot":
                with self._lock:
                    pending = self._pending.pop(message[1], None)
                if pending is not None:
                    done, box = pending
                    box.extend([message[2], message[3]])
                    done.set()
            elif kind == "finalized":
                self._final = (message[1], message[2])
                self._finalized.set()
                return


#: Either live analysis: in a thread of the scan's process, or in its own process.
LiveAnalysis = AnalysisWorker | AnalysisProcess
