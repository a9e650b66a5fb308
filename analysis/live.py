"""The live analysis beside a scan: one loop, driven in a thread or in a process of its own.

A scan session subscribes a live analysis to the scan writer's "tile
stored" event (:class:`acquisition.storage.TileStored`): the analysis is
told each tile once it is complete on disk, and never slows acquisition.
The same loop, :func:`run_analysis_loop`, runs around a
:class:`~analysis.scan_analysis.ScanAnalysis` in both drivers:

- :class:`AnalysisProcess` (what ``cordscope scan``, the GUI and the demo
  cohort use): the loop runs in a child process at a lower priority; the
  scan names each stored tile to it and the child reads the tile from the
  file (no pixels cross between the processes; the file is read beside the
  writer, without a lock). On this 2-core machine a thread slowed the scan
  to ~0.8 of a bare pymmcore-plus run (shared interpreter lock and CPU); the
  process keeps it at full speed (``benchmarks/bench_scan_throughput.py``).
- :class:`AnalysisThread`: the loop runs in a thread of the scan's process,
  with the pixels handed over in memory (up to ``max_queued_images`` tiles;
  beyond, tiles are read back from the file), for scripts that want one
  process.

Messages are typed (:class:`AnalyseTile`, :class:`SnapshotRequest`,
:class:`Finalize`, :class:`Stop` in; :class:`TileAnalysed`,
:class:`MapsUpdated`, :class:`SnapshotReply`, :class:`Finished` out).
Requests are answered between two tiles; live region tables are published
at most every :data:`MIN_UPDATE_INTERVAL_S`. After the scan has closed its
file, :meth:`LiveAnalysisDriver.finalize` analyses what is left and writes the
results (:meth:`ScanAnalysis.finalize`).
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import logging
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from psygnal import Signal, SignalGroup

from acquisition.storage import TileStored
from analysis.maps import RegionRow
from analysis.scan_analysis import AnalysisFault, ScanAnalysis, TileKey, saved_section_snapshot
from analysis.section_analysis import LiveSnapshot
from analysis.settings import AnalysisSettings

__all__ = [
    "MIN_UPDATE_INTERVAL_S",
    "AnalyseTile",
    "AnalysisEvents",
    "AnalysisProcess",
    "AnalysisProcessError",
    "AnalysisProgress",
    "AnalysisThread",
    "Finalize",
    "Finished",
    "LiveAnalysisDriver",
    "MapsUpdated",
    "SnapshotReply",
    "SnapshotRequest",
    "Stop",
    "TargetsReply",
    "TargetsRequest",
    "TileAnalysed",
    "run_analysis_loop",
]

logger = logging.getLogger(__name__)

#: Shortest time between two ``maps_updated`` emissions (s): ≤ 10 per second.
MIN_UPDATE_INTERVAL_S = 0.1

#: Nice value of the analysis (process, or thread on Linux): when both want the CPU, acquisition wins.
ANALYSIS_NICE = 10

_SNAPSHOT_TIMEOUT_S = 30.0


class AnalysisProcessError(RuntimeError):
    """The live analysis failed or stopped answering (the message says what happened)."""


# ------------------------------------------------------------------ messages


@dataclasses.dataclass(frozen=True)
class AnalyseTile:
    """Analyse a stored tile: ``images`` ``(C, Z, H, W)`` handed over in memory, or None (read the file)."""

    section_id: str
    tile_index: int
    images: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class SnapshotRequest:
    """Send a :class:`SnapshotReply` with a copy of a section's state."""

    request_id: int
    section_id: str


@dataclasses.dataclass(frozen=True)
class TargetsRequest:
    """Send a :class:`TargetsReply`: what an adaptive pass should image in a section."""

    request_id: int
    section_id: str
    region: str
    min_pct_axonal_area: float


@dataclasses.dataclass(frozen=True)
class Finalize:
    """Analyse what is left, write the results, answer :class:`Finished` and end."""


@dataclasses.dataclass(frozen=True)
class Stop:
    """End without writing results (answered with :class:`Finished` carrying an error)."""


@dataclasses.dataclass(frozen=True)
class TileAnalysed:
    """A tile was analysed (``fault``: the exception, if its analysis failed)."""

    section_id: str
    tile_index: int
    fault: str | None = None


@dataclasses.dataclass(frozen=True)
class MapsUpdated:
    """A section's live region table changed."""

    section_id: str
    rows: list[RegionRow]


@dataclasses.dataclass(frozen=True)
class SnapshotReply:
    """The answer to a :class:`SnapshotRequest`."""

    request_id: int
    snapshot: LiveSnapshot | None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class TargetsReply:
    """The answer to a :class:`TargetsRequest`: polygons in stage µm (or why there are none)."""

    request_id: int
    polygons: list[list[tuple[float, float]]]
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Finished:
    """The loop ended: the final tables, or why there are none."""

    tables: dict[str, list[RegionRow]] | None
    error: str | None = None


Request = SnapshotRequest | TargetsRequest | Finalize | Stop
Reply = TileAnalysed | MapsUpdated | SnapshotReply | TargetsReply | Finished


class _Inbox(Protocol):
    def get(self, block: bool = True, timeout: float | None = None) -> Any: ...


# ---------------------------------------------------------------------- loop


def run_analysis_loop(
    analysis: ScanAnalysis,
    tiles: _Inbox,
    requests: _Inbox,
    send: Callable[[Reply], None],
    *,
    keep_going: Callable[[], bool] = lambda: True,
) -> None:
    """Feed an analysis from an inbox of tiles; answer requests between tiles; end with :class:`Finished`.

    The one loop of both live drivers. ``keep_going`` is asked between
    tiles: when it returns False (the scan's process is gone) the loop ends
    without results.
    """
    n_faults = 0
    last_update = -np.inf

    def publish() -> None:
        nonlocal last_update
        if time.monotonic() - last_update < MIN_UPDATE_INTERVAL_S:
            return
        update = analysis.next_update()
        if update is not None:
            send(MapsUpdated(*update))
            # the interval counts from the emission: computing the masks may have taken a while
            last_update = time.monotonic()

    def pending_request() -> Request | None:
        try:
            return requests.get(block=False)  # type: ignore[no-any-return]
        except queue.Empty:
            return None

    try:
        while True:
            if not keep_going():
                analysis.close()
                return  # the scan's process is gone: its file is resumed by a new scan
            request = pending_request()
            while isinstance(request, SnapshotRequest | TargetsRequest):
                if isinstance(request, TargetsRequest):
                    try:
                        polygons = analysis.adaptive_targets(
                            request.section_id,
                            region=request.region,
                            min_pct_axonal_area=request.min_pct_axonal_area,
                        )
                        send(TargetsReply(request.request_id, polygons))
                    except Exception as e:  # reported to the caller, the analysis goes on
                        logger.exception("adaptive targets of section %s failed", request.section_id)
                        send(TargetsReply(request.request_id, [], f"{type(e).__name__}: {e}"))
                    request = pending_request()
                    continue
                try:
                    send(SnapshotReply(request.request_id, analysis.snapshot(request.section_id)))
                except Exception as e:  # reported to the caller, the analysis goes on
                    send(SnapshotReply(request.request_id, None, f"{type(e).__name__}: {e}"))
                request = pending_request()
            if isinstance(request, Stop):
                analysis.close()
                send(Finished(None, "stopped before the final analysis"))
                return
            if isinstance(request, Finalize):
                break
            try:
                item: AnalyseTile = tiles.get(timeout=MIN_UPDATE_INTERVAL_S / 2)
            except queue.Empty:
                publish()
                continue
            if analysis.add_tile(item.section_id, item.tile_index, item.images):
                fault = None
                if len(analysis.faults) > n_faults:
                    fault = analysis.faults[n_faults].message
                    n_faults = len(analysis.faults)
                send(TileAnalysed(item.section_id, item.tile_index, fault))
            publish()
        # tiles named but not analysed yet are picked up by finalize (it reads every done tile)
        analysed_before = set(analysis.analysis_counts)
        try:
            tables = analysis.finalize(should_continue=keep_going)
        except InterruptedError:
            if keep_going():
                raise
            return  # the scan's process is gone: nobody waits for the results; the file is resumable
        for late in analysis.faults[n_faults:]:
            send(TileAnalysed(late.section_id, late.tile_index, late.message))
        faulted = {(f.section_id, f.tile_index) for f in analysis.faults[n_faults:]}
        for key in analysis.analysis_counts.keys() - analysed_before - faulted:
            send(TileAnalysed(*key))
        send(Finished(tables))
    except Exception as e:
        logger.exception("the analysis of %s failed", analysis.scan_path.name)
        analysis.close()
        send(Finished(None, f"{type(e).__name__}: {e}"))


# ------------------------------------------------------------------- drivers


class AnalysisEvents(SignalGroup):
    """Signals of a live analysis driver (emitted from its relay or analysis thread)."""

    maps_updated = Signal(str, list)
    """``(section_id, rows)``: the section's live region table (list of RegionRow); ≤ 10 Hz."""
    tile_analysed = Signal(str, int)
    """``(section_id, tile_index)``: a tile was analysed."""
    finished = Signal()
    """The analysis wrote its results (emitted by :meth:`LiveAnalysisDriver.finalize`)."""


@dataclasses.dataclass(frozen=True)
class AnalysisProgress:
    """How far the live analysis is behind the camera.

    Attributes
    ----------
    tiles_stored : int
        Tiles the scan stored (and named to the analysis) in this run.
    tiles_analysed : int
    tiles_behind : int
        Stored tiles not analysed yet.
    behind_s : float
        Time since the oldest of them was stored (0 when caught up).
    """

    tiles_stored: int
    tiles_analysed: int
    tiles_behind: int
    behind_s: float


class LiveAnalysisDriver(abc.ABC):
    """What both live drivers share: the replies' bookkeeping, events, finalize, progress.

    Subclasses move messages: :class:`AnalysisThread` in memory,
    :class:`AnalysisProcess` through multiprocessing queues.

    Attributes
    ----------
    events : AnalysisEvents
    analysis_counts : Counter of (section_id, tile_index)
        Tiles analysed (1 each).
    faults : list of AnalysisFault
    n_updates : int
        ``maps_updated`` emissions.
    """

    def __init__(self, scan_path: str | Path, *, settings: AnalysisSettings | None = None) -> None:
        self.scan_path = Path(scan_path)
        self.settings = settings
        self.events = AnalysisEvents()
        self.analysis_counts: Counter[TileKey] = Counter()
        self.faults: list[AnalysisFault] = []
        self.n_updates = 0
        self._lock = threading.Lock()
        self._stored_at: dict[TileKey, float] = {}  # stored, not analysed yet: when stored
        self._n_stored = 0
        self._section_ids: dict[str, None] = {}
        self._final: Finished | None = None
        self._finished = threading.Event()
        self._finalizing = False
        self._started = False
        self._req_ids = itertools.count()
        self._replies_due: dict[int, tuple[threading.Event, list[TargetsReply]]] = {}

    # ------------------------------------------------------------- feeding

    def on_tile_stored(self, stored: TileStored) -> None:
        """Name a stored tile to the analysis (connect to the writer's ``tile_stored``); never blocks."""
        key = (stored.section_id, stored.tile_index)
        with self._lock:
            self._n_stored += 1
            self._stored_at.setdefault(key, time.monotonic())
            self._section_ids.setdefault(stored.section_id)
        self._send_tile(stored)

    @abc.abstractmethod
    def _send_tile(self, stored: TileStored) -> None:
        """Hand a stored tile to the analysis (its pixels, or its name only)."""

    # ------------------------------------------------------------- replies

    def _handle(self, reply: Reply) -> None:
        if isinstance(reply, TileAnalysed):
            key = (reply.section_id, reply.tile_index)
            with self._lock:
                self.analysis_counts[key] = 1
                self._stored_at.pop(key, None)
                if reply.fault is not None:
                    self.faults.append(AnalysisFault(reply.section_id, reply.tile_index, reply.fault))
            self.events.tile_analysed.emit(*key)
        elif isinstance(reply, MapsUpdated):
            self.n_updates += 1
            self.events.maps_updated.emit(reply.section_id, reply.rows)
        elif isinstance(reply, SnapshotReply):
            self._snapshot_arrived(reply)
        elif isinstance(reply, TargetsReply):
            with self._lock:
                due = self._replies_due.pop(reply.request_id, None)
            if due is not None:
                due[1].append(reply)
                due[0].set()
        elif isinstance(reply, Finished):
            self._final = reply
            self._finished.set()

    def _snapshot_arrived(self, reply: SnapshotReply) -> None:
        logger.debug("snapshot reply %s not asked for by message", reply.request_id)

    # --------------------------------------------------------------- state

    @property
    def section_ids(self) -> list[str]:
        """Sections with at least one tile named to the analysis."""
        with self._lock:
            return list(self._section_ids)

    @property
    def analysed_tiles(self) -> set[TileKey]:
        """Tiles analysed so far."""
        with self._lock:
            return set(self.analysis_counts)

    def progress(self) -> AnalysisProgress:
        """How far the analysis is behind the camera."""
        with self._lock:
            behind = len(self._stored_at)
            oldest = min(self._stored_at.values(), default=None)
            return AnalysisProgress(
                tiles_stored=self._n_stored,
                tiles_analysed=len(self.analysis_counts),
                tiles_behind=behind,
                behind_s=0.0 if oldest is None else time.monotonic() - oldest,
            )

    # ------------------------------------------------------------- control

    def start(self) -> None:
        """Start the analysis (idempotent)."""
        if not self._started:
            self._started = True
            self._start()

    @abc.abstractmethod
    def _start(self) -> None:
        """Start the thread or process running :func:`run_analysis_loop`."""

    @abc.abstractmethod
    def _request(self, request: Request) -> None:
        """Send a request to the loop."""

    @abc.abstractmethod
    def _alive(self) -> bool:
        """Whether the loop's thread or process still runs."""

    def stop(self) -> None:
        """End the analysis without writing results (e.g. when no tile was acquired)."""
        if self._started and self._alive():
            self._request(Stop())

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the analysis to end (after :meth:`finalize` or :meth:`stop`)."""
        self._finished.wait(timeout_s)

    def finalize(self, *, timeout_s: float | None = None) -> dict[str, list[RegionRow]]:
        """After the scan closed the file: finish, write the results; return the tables.

        Raises
        ------
        AnalysisProcessError
            If the analysis failed, or did not finish within ``timeout_s``.
        """
        self.start()
        self._finalizing = True
        self._request(Finalize())
        if not self._finished.wait(timeout_s):
            raise AnalysisProcessError(f"analysis of {self.scan_path.name} not finished after {timeout_s} s")
        final = self._final
        if final is None or final.error is not None or final.tables is None:
            why = "no answer" if final is None else final.error
            raise AnalysisProcessError(f"analysis of {self.scan_path.name} failed: {why}")
        self.events.finished.emit()
        return final.tables

    @abc.abstractmethod
    def snapshot(self, section_id: str) -> LiveSnapshot | None:
        """A copy of one section's live (or final) state; may block: call it off the GUI thread."""

    def adaptive_targets(
        self, section_id: str, *, region: str, min_pct_axonal_area: float, timeout_s: float = 120.0
    ) -> list[list[tuple[float, float]]]:
        """What an adaptive pass should image in a section (:meth:`ScanAnalysis.adaptive_targets`).

        Asked between two tiles; the analysis first catches up with the
        section's done tiles. Blocks until it answers.

        Raises
        ------
        AnalysisProcessError
            If the analysis does not answer within ``timeout_s`` or failed to compute them.
        """
        self.start()
        req_id = next(self._req_ids)
        done = threading.Event()
        box: list[TargetsReply] = []
        with self._lock:
            self._replies_due[req_id] = (done, box)
        self._request(TargetsRequest(req_id, section_id, region, float(min_pct_axonal_area)))
        if not done.wait(timeout_s):
            with self._lock:
                self._replies_due.pop(req_id, None)
            raise AnalysisProcessError(f"no adaptive targets for section {section_id} within {timeout_s:g} s")
        if box[0].error is not None:
            raise AnalysisProcessError(f"adaptive targets of section {section_id} failed: {box[0].error}")
        return box[0].polygons


class AnalysisThread(LiveAnalysisDriver):
    """The live analysis in a thread of the scan's process (pixels handed over in memory).

    Parameters
    ----------
    scan_path : path
        The scan file being written.
    settings : AnalysisSettings, optional
        Default: the plan's settings, read from the scan file.
    max_queued_images : int
        Tiles whose pixels wait in memory; beyond, tiles are named only and read back from the file.
    """

    def __init__(
        self, scan_path: str | Path, *, settings: AnalysisSettings | None = None, max_queued_images: int = 8
    ) -> None:
        super().__init__(scan_path, settings=settings)
        if max_queued_images < 0:
            raise ValueError(f"max_queued_images must be ≥ 0, got {max_queued_images}")
        self.max_queued_images = int(max_queued_images)
        self.analysis = ScanAnalysis(self.scan_path, settings=settings)
        self._tiles: queue.SimpleQueue[AnalyseTile] = queue.SimpleQueue()
        self._requests: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._queued_images = 0
        self._thread: threading.Thread | None = None

    def _send_tile(self, stored: TileStored) -> None:
        with self._lock:
            with_images = self._queued_images < self.max_queued_images
            self._queued_images += with_images
        self._tiles.put(
            AnalyseTile(stored.section_id, stored.tile_index, stored.images if with_images else None)
        )

    def _handle(self, reply: Reply) -> None:
        if isinstance(reply, TileAnalysed):
            with self._lock:
                self._queued_images = max(0, self._queued_images - 1)
        super()._handle(reply)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cordscope-analysis", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        _lower_this_threads_priority()
        run_analysis_loop(self.analysis, self._tiles, self._requests, self._handle)

    def _request(self, request: Request) -> None:
        self._requests.put(request)

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def snapshot(self, section_id: str) -> LiveSnapshot | None:
        """A copy of one section's live (or final) state, taken from this thread."""
        return self.analysis.snapshot(section_id)


def _child_main(
    scan_path: str,
    settings: AnalysisSettings | None,
    tiles: Any,
    requests: Any,
    replies: Any,
    log_level: int | None = None,
) -> None:
    """Body of the analysis process: the loop, reading tiles beside the scan's writer."""
    try:
        os.nice(ANALYSIS_NICE)
    except OSError:
        logger.debug("analysis process keeps its priority")
    if log_level is not None:
        logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    parent = mp.parent_process()
    parent_gone = threading.Event()
    if parent is not None:
        threading.Thread(
            target=_watch_parent, args=(parent, parent_gone), name="cordscope-parent-watch", daemon=True
        ).start()
    # a reader beside the scan's writer: never holds a lock a resumed scan would meet
    analysis = ScanAnalysis(scan_path, settings=settings, beside_writer=True)
    run_analysis_loop(
        analysis,
        tiles,
        requests,
        replies.put,
        keep_going=lambda: not parent_gone.is_set(),
    )


#: After the scan's process died, how long (s) the analysis process may take to stop between two
#: tiles and close the scan file before it ends itself.
PARENT_GONE_GRACE_S = 5.0


def _watch_parent(parent: Any, gone: threading.Event) -> None:
    """End this analysis process soon after the scan's process dies (it holds the scan file).

    The loop sees ``gone`` between tiles (also during the final analysis)
    and stops, closing the file; if it has not ended within
    :data:`PARENT_GONE_GRACE_S` (a long step), the process ends itself, as a
    kill would have ended it: the scan file stays resumable.
    """
    from multiprocessing.connection import wait

    wait([parent.sentinel])
    gone.set()
    time.sleep(PARENT_GONE_GRACE_S)
    os._exit(1)


def _process_context() -> Any:
    """Forkserver where available: each analysis process then starts in ~0.1 s, not ~2.5 s of imports."""
    if sys.platform == "linux":
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["analysis.live"])
        return ctx
    return mp.get_context("spawn")


#: How long :meth:`AnalysisProcess.finalize` waits for the process and its queues to end after its answer.
RELAY_END_TIMEOUT_S = 15.0


class AnalysisProcess(LiveAnalysisDriver):
    """The live analysis in a child process (tiles are named to it and read from the file).

    Parameters
    ----------
    scan_path : path
        The scan file being written.
    settings : AnalysisSettings, optional
        Default: the plan's settings, read from the scan file.
    """

    def __init__(self, scan_path: str | Path, *, settings: AnalysisSettings | None = None) -> None:
        super().__init__(scan_path, settings=settings)
        self._ctx = _process_context()
        self._tiles: Any = self._ctx.Queue()
        self._requests: Any = self._ctx.Queue()
        self._replies: Any = self._ctx.Queue()
        self._process: Any = None
        self._listener: threading.Thread | None = None
        self._queues_closed = False
        self._pending: dict[int, tuple[threading.Event, list[SnapshotReply]]] = {}

    def _send_tile(self, stored: TileStored) -> None:
        with self._lock:
            if self._finished.is_set() or self._queues_closed:
                return  # the analysis ended (its error was reported); the file keeps the tile
            self._tiles.put(AnalyseTile(stored.section_id, stored.tile_index))

    def _start(self) -> None:
        self._process = self._ctx.Process(
            target=_child_main,
            args=(
                str(self.scan_path),
                self.settings,
                self._tiles,
                self._requests,
                self._replies,
                _handler_level(),
            ),
            name="cordscope-analysis",
            daemon=True,
        )
        self._process.start()
        self._listener = threading.Thread(target=self._listen, name="cordscope-analysis-relay", daemon=True)
        self._listener.start()

    def _request(self, request: Request) -> None:
        if isinstance(request, Finalize):
            with self._lock:  # the process answers no snapshot while it writes the results
                pending, self._pending = self._pending, {}
            for done, _box in pending.values():
                done.set()
        with self._lock:
            if self._queues_closed:
                return  # the process has ended: nobody would read it
            self._requests.put(request)

    def _alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the analysis process to end."""
        super().join(timeout_s)
        if self._process is not None:
            self._process.join(timeout_s)
        self._join_relay(timeout_s)

    def finalize(self, *, timeout_s: float | None = None) -> dict[str, list[RegionRow]]:
        """As :meth:`LiveAnalysisDriver.finalize`; returns once the process and its queues have ended.

        So a script may exit right after it: no relay thread is left draining
        queues while the interpreter shuts down.
        """
        try:
            return super().finalize(timeout_s=timeout_s)
        finally:
            self._join_relay(RELAY_END_TIMEOUT_S)

    def _join_relay(self, timeout_s: float | None) -> None:
        relay = self._listener
        if relay is not None and relay is not threading.current_thread() and self._finished.is_set():
            relay.join(timeout_s)

    def snapshot(self, section_id: str) -> LiveSnapshot | None:
        """A copy of one section's live (or final) state, from the analysis process.

        Blocks until the process answers (between two tiles): call it off the
        GUI thread. Returns None while :meth:`finalize` writes the results,
        and reads the written results from the file afterwards.

        Raises
        ------
        AnalysisProcessError
            If the process does not answer within 30 s.
        """
        if self._process is None:
            return None
        if self._finished.is_set() or not self._process.is_alive():
            return saved_section_snapshot(self.scan_path, section_id)
        if self._finalizing:
            return None  # the results are being written: ask again once finalize() returned
        req_id = next(self._req_ids)
        done = threading.Event()
        box: list[SnapshotReply] = []
        with self._lock:
            self._pending[req_id] = (done, box)
            if self._queues_closed:
                return saved_section_snapshot(self.scan_path, section_id)
            self._requests.put(SnapshotRequest(req_id, section_id))
        if not done.wait(_SNAPSHOT_TIMEOUT_S):
            with self._lock:
                self._pending.pop(req_id, None)
            if not self._process.is_alive():
                return saved_section_snapshot(self.scan_path, section_id)
            raise AnalysisProcessError(f"no snapshot of section {section_id} within {_SNAPSHOT_TIMEOUT_S} s")
        if not box:
            return None  # finalize began meanwhile
        if box[0].error is not None:
            raise AnalysisProcessError(f"snapshot of section {section_id} failed: {box[0].error}")
        return box[0].snapshot

    def _snapshot_arrived(self, reply: SnapshotReply) -> None:
        with self._lock:
            pending = self._pending.pop(reply.request_id, None)
        if pending is not None:
            done, box = pending
            box.append(reply)
            done.set()

    def _listen(self) -> None:
        while True:
            try:
                reply = self._replies.get(timeout=0.5)
            except queue.Empty:
                if self._process is not None and not self._process.is_alive() and not self._finished.is_set():
                    code = self._process.exitcode
                    self._handle(Finished(None, f"the analysis process exited (code {code})"))
                    self._close_queues()
                    return
                continue
            self._handle(reply)
            if isinstance(reply, Finished):
                self._close_queues()
                return

    def _close_queues(self) -> None:
        """Once the process has ended, end the queues and their feeder threads (nothing is left running).

        Tiles the process never read (it reads done tiles from the file once
        it finalizes) are drained here first: a feeder thread with a full pipe
        and no reader would block forever, and the interpreter's exit with it.
        """
        if self._process is not None:
            self._process.join(10)
            if self._process.is_alive():
                logger.warning("the analysis process did not end within 10 s of its last answer")
                return
        with self._lock:
            self._queues_closed = True
        for q in (self._tiles, self._requests):
            while True:
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    break
            q.cancel_join_thread()  # what is left in its buffer has no reader any more
            q.close()
            q.join_thread()
        self._replies.close()
        self._replies.join_thread()


def _handler_level() -> int | None:
    """The level of this process' root log handler (the command line's), for the analysis process."""
    level = max((h.level for h in logging.getLogger().handlers), default=logging.NOTSET)
    return level if level > logging.NOTSET else None


def _lower_this_threads_priority() -> None:
    """Run the calling thread at :data:`ANALYSIS_NICE` where the OS allows a per-thread nice."""
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(current, ANALYSIS_NICE))
    except OSError as e:  # not permitted, or not Linux semantics: run at normal priority
        logger.debug("analysis thread keeps its priority: %s", e)
