"""A scan session: acquisition, the live analysis beside it and the final results, as one state machine.

:class:`ScanSession` is what the command line, the GUI and the demo cohort
run. One session scans one plan into one file (or continues one file):

    idle → preparing → focusing → scanning ⇄ paused → finalizing → done
                                    (any step)                   → failed

- *preparing*: the plan is checked against the hardware and the disk
  before anything moves, the objective is set, dark frames are taken at each
  channel's exposure (shutter closed; a resumed scan keeps its own) and,
  with the calibration files beside the configuration
  (:mod:`acquisition.calibration`), stored in the file's ``/calibration``;
  the file is laid out (or, resuming, repaired and reopened);
- *focusing*: the focus map (plans with ``focus.strategy: focus_map``);
- *scanning* / *paused*: the MDA run (:class:`~acquisition.controller.ScanController`);
  the scan writer's "tile stored" events (:class:`~acquisition.storage.TileStored`)
  feed the live analysis;
- *finalizing*: once the file is closed, the live analysis analyses what it
  has not caught up with and writes the results into the file;
- *done*: the acquisition ended (complete, aborted, or with failed tiles:
  :attr:`SessionResult.scan` says which) and its results are written;
  *failed*: the plan could not start, or the acquisition stopped on an error.

The live analysis is given as a factory (a class such as
:class:`analysis.live.AnalysisProcess`, called with the scan file's path);
acquisition never imports the analysis, it only knows the small
:class:`LiveAnalysis` contract below. Pause, resume and abort take effect
between images, as in pymmcore-plus' runner.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from psygnal import Signal, SignalGroup
from pymmcore_plus import CMMCorePlus

from .controller import ScanController, ScanProgress, ScanResult, read_stored_plan
from .engine import _one_line
from .errors import CordScopeError
from .plan import ScanPlan
from .storage import TileStored

__all__ = ["LiveAnalysis", "ScanSession", "SessionEvents", "SessionResult", "SessionState"]

logger = logging.getLogger(__name__)

SessionState = Literal["idle", "preparing", "focusing", "scanning", "paused", "finalizing", "done", "failed"]

#: Longest wait for the final analysis of a session (s); a demo scan takes seconds.
FINALIZE_TIMEOUT_S = 1800.0


class LiveAnalysis(Protocol):
    """What a session needs of a live analysis (:class:`analysis.live.LiveAnalysisDriver` fulfils it)."""

    events: Any
    """Has ``maps_updated`` (section id, region rows)."""

    def start(self) -> None:
        """Start analysing (before the first tile arrives)."""

    def on_tile_stored(self, stored: TileStored) -> None:
        """Take a stored tile; must never block the scan."""

    def finalize(self, *, timeout_s: float | None = None) -> dict[str, list[Any]]:
        """After the file is closed: analyse what is left, write results, return region tables."""

    def stop(self) -> None:
        """End without results (nothing was acquired)."""

    def snapshot(self, section_id: str) -> Any:
        """A copy of one section's live state (may block)."""

    def progress(self) -> Any:
        """How far the analysis is behind the camera."""

    def adaptive_targets(
        self, section_id: str, *, region: str, min_pct_axonal_area: float
    ) -> list[list[tuple[float, float]]]:
        """For an adaptive pass: polygons (stage µm) of a section to image again (may block)."""


AnalysisFactory = Callable[[Path], LiveAnalysis]


@dataclass(frozen=True)
class SessionResult:
    """How a session ended.

    Attributes
    ----------
    scan : ScanResult
        How the acquisition ended (state finished / aborted / failed, tile counts).
    tables : mapping of section id → region rows, or None
        The final region tables (None without analysis, or when it failed).
    analysis_error : str or None
        Why the final analysis failed.
    """

    scan: ScanResult
    tables: Mapping[str, list[Any]] | None = None
    analysis_error: str | None = None

    @property
    def path(self) -> Path:
        """The scan file."""
        return self.scan.path

    @property
    def complete(self) -> bool:
        """Every tile done and, with an analysis, its results written."""
        return self.scan.complete and self.analysis_error is None


class SessionEvents(SignalGroup):
    """Signals of a session, emitted from its threads (connect them queued in Qt)."""

    state_changed = Signal(str)
    """The session's :data:`SessionState`."""
    progress = Signal(object)
    """:class:`~acquisition.controller.ScanProgress` after every tile."""
    message = Signal(str, str)
    """``(level, text)``: info, warning or error for the user."""
    tile_stored = Signal(object)
    """:class:`~acquisition.storage.TileStored`: a tile is complete on disk."""
    tile_failed = Signal(str, int, str)
    """``(section_id, tile_index, reason)``."""
    maps_updated = Signal(str, list)
    """``(section_id, rows)``: a section's live region table changed."""
    finished = Signal(object)
    """:class:`SessionResult`."""


_FROM_CONTROLLER: dict[str, SessionState] = {
    "preparing": "preparing",
    "focusing": "focusing",
    "scanning": "scanning",
    "paused": "paused",
}


class ScanSession:
    """One scan (or the rest of one) with its live analysis and final results (see the module docstring).

    Parameters
    ----------
    core : CMMCorePlus
        A loaded core.
    plan : ScanPlan
        The plan to scan (checked against ``core`` before anything moves).
    analysis : callable, optional
        Makes the live analysis from the scan file's path (e.g.
        ``analysis.live.AnalysisProcess``); None: acquisition only.
    overwrite : bool
        Replace an existing output file.
    stage_limits_um : optional
        ``((xmin, xmax), (ymin, ymax))`` of the XY stage for validation.
    finalize_timeout_s : float
        Longest wait for the final analysis.
    """

    def __init__(
        self,
        core: CMMCorePlus,
        plan: ScanPlan,
        *,
        analysis: AnalysisFactory | None = None,
        overwrite: bool = False,
        stage_limits_um: tuple[tuple[float, float], tuple[float, float]] | None = None,
        finalize_timeout_s: float = FINALIZE_TIMEOUT_S,
        _resume_path: Path | None = None,
    ) -> None:
        self.events = SessionEvents()
        self.controller = ScanController(
            core, plan, overwrite=overwrite, stage_limits_um=stage_limits_um, _resume_path=_resume_path
        )
        self.resuming = _resume_path is not None
        self.finalize_timeout_s = float(finalize_timeout_s)
        self._analysis_factory = analysis
        self.analysis: LiveAnalysis | None = None
        self._state: SessionState = "idle"
        self._result: SessionResult | None = None
        self._thread: threading.Thread | None = None
        ev = self.controller.events
        ev.state_changed.connect(self._controller_state)
        ev.progress.connect(self.events.progress)
        ev.message.connect(self.events.message)
        ev.tile_stored.connect(self.events.tile_stored)
        ev.tile_failed.connect(self.events.tile_failed)

    @classmethod
    def resume(
        cls,
        path: str | Path,
        core: CMMCorePlus,
        *,
        analysis: AnalysisFactory | None = None,
        stage_limits_um: tuple[tuple[float, float], tuple[float, float]] | None = None,
        finalize_timeout_s: float = FINALIZE_TIMEOUT_S,
    ) -> ScanSession:
        """A session that continues the scan file ``path`` from the plan stored in it.

        Only tiles not yet done (pending or failed) are acquired, at the
        positions and focus stored in the file; what a crash left behind is
        repaired first.
        """
        file = Path(path)
        return cls(
            core,
            read_stored_plan(file),
            analysis=analysis,
            stage_limits_um=stage_limits_um,
            finalize_timeout_s=finalize_timeout_s,
            _resume_path=file,
        )

    # ------------------------------------------------------------- access

    @property
    def plan(self) -> ScanPlan:
        """The plan being scanned."""
        return self.controller.plan

    @property
    def core(self) -> CMMCorePlus:
        """The microscope."""
        return self.controller.core

    @property
    def output_path(self) -> Path:
        """The scan file."""
        return self.controller.output_path

    @property
    def state(self) -> SessionState:
        """Current state."""
        return self._state

    @property
    def result(self) -> SessionResult | None:
        """How the session ended (None while it runs)."""
        return self._result

    def progress(self) -> ScanProgress:
        """A snapshot of the acquisition's progress."""
        return self.controller.progress()

    def snapshot(self, section_id: str) -> Any:
        """A copy of one section's live analysis state (None without analysis); may block."""
        return None if self.analysis is None else self.analysis.snapshot(section_id)

    # ------------------------------------------------------------ control

    def start(self) -> threading.Thread:
        """Run the session in a background thread; returns the thread."""
        if self._thread is not None:
            raise CordScopeError("this session was already started; make a new one to scan again")
        self._thread = threading.Thread(target=self._run_catching, name="cordscope-session", daemon=True)
        self._thread.start()
        return self._thread

    def _run_catching(self) -> None:
        try:
            self.run()
        except Exception:  # already reported: events.message and events.finished carry it
            logger.debug("scan session ended with an error", exc_info=True)

    def wait(self, timeout_s: float | None = None) -> SessionResult:
        """Wait for a started session to end and return its result."""
        if self._thread is None:
            raise CordScopeError("the scan session was not started")
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"scan session still running after {timeout_s} s")
        assert self._result is not None
        return self._result

    def pause(self) -> None:
        """Pause between images."""
        self.controller.pause()

    def resume_scanning(self) -> None:
        """Continue after :meth:`pause`."""
        self.controller.resume_scanning()

    def abort(self, reason: str = "aborted by the user") -> None:
        """Stop acquiring after the current image; the file stays resumable (done tiles are analysed)."""
        self.controller.abort(reason)

    # ---------------------------------------------------------------- run

    def run(self) -> SessionResult:
        """Run the whole session in this thread; returns how it ended.

        Raises
        ------
        PlanError, ConfigError, StorageError
            Before anything moves, when the plan does not fit the hardware or
            the file cannot be written (the session is then *failed*).
        """
        analysis = self._start_analysis()
        try:
            scan = self.controller.run()
        except BaseException:
            if analysis is not None:
                analysis.stop()
            self._set_state("failed")
            scan_result = self.controller.result
            if scan_result is not None:  # None: interrupted before the controller could say why
                self._result = SessionResult(scan_result)
                self.events.finished.emit(self._result)
            raise
        tables, error = None, None
        if analysis is not None:
            if scan.tiles_done and scan.path.is_file():
                self._set_state("finalizing")
                try:
                    tables = analysis.finalize(timeout_s=self.finalize_timeout_s)
                except Exception as e:  # the tiles are safe; the analysis can be rerun from the file
                    error = _one_line(e)
                    self.events.message.emit(
                        "error",
                        f"the final analysis of {scan.path.name} failed: {error}; "
                        f"rerun it with: cordscope analyze {scan.path}",
                    )
            else:
                analysis.stop()
        self._result = SessionResult(scan, tables, error)
        self._set_state("failed" if scan.state == "failed" else "done")
        self.events.finished.emit(self._result)
        return self._result

    def _start_analysis(self) -> LiveAnalysis | None:
        if self._analysis_factory is None:
            return None
        analysis = self._analysis_factory(self.output_path)
        self.analysis = analysis
        self.controller.events.tile_stored.connect(self._feed_analysis)
        if self.plan.adaptive is not None:
            self.controller.adaptive_targets = self._adaptive_targets
        analysis.events.maps_updated.connect(self.events.maps_updated)
        analysis.start()  # starts while the scan prepares and focuses
        return analysis

    def _adaptive_targets(self, section_id: str) -> list[list[tuple[float, float]]]:
        # runs in the scan's thread between the first pass and the adaptive pass
        assert self.analysis is not None and self.plan.adaptive is not None
        adaptive = self.plan.adaptive
        return self.analysis.adaptive_targets(
            section_id, region=adaptive.region, min_pct_axonal_area=adaptive.min_pct_axonal_area
        )

    def _feed_analysis(self, stored: TileStored) -> None:
        # runs in the writer's thread: an analysis fault is logged, never stops the scan
        assert self.analysis is not None
        try:
            self.analysis.on_tile_stored(stored)
        except Exception:
            logger.exception("the live analysis could not take tile %s", stored.name)

    def _controller_state(self, state: str) -> None:
        if (mapped := _FROM_CONTROLLER.get(state)) is not None:
            self._set_state(mapped)

    def _set_state(self, state: SessionState) -> None:
        self._state = state
        self.events.state_changed.emit(state)
