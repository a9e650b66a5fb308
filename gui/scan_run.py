"""Running one scan from the GUI: a :class:`~acquisition.session.ScanSession`, its signals on the Qt thread.

:class:`ScanRun` starts a session (a new plan, or the rest of a file) with the
live analysis in its own process (:class:`~analysis.live.AnalysisProcess`, so
the scan keeps its speed), forwards pause, resume and abort, and re-emits the
session's signals (sent from its own threads) as Qt signals, which Qt queues to
the Qt thread (:class:`_ScanBridge`). Reading a file to resume runs off the Qt
thread. It has no widgets: the scan panel shows what it says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PyQt6.QtCore import QObject, pyqtSignal

from acquisition.session import ScanSession
from analysis.live import AnalysisProcess

from .results_io import file_lock
from .workers import run_for_widget

__all__ = ["RUNNING_STATES", "STATE_LABELS", "ScanRun", "clock", "describe_analysis_progress"]

logger = logging.getLogger(__name__)

#: Session states in which acquisition is under way.
RUNNING_STATES = ("preparing", "focusing", "scanning", "paused")
#: What the state line says in each state.
STATE_LABELS = {
    "idle": "Idle",
    "starting": "Starting…",
    "preparing": "Preparing (checking the plan, setting the objective)…",
    "focusing": "Focusing: building the focus map…",
    "scanning": "Scanning",
    "paused": "Paused",
    "finalizing": "Writing the final analysis…",
    "finished": "Finished",
    "aborted": "Aborted (the file can be resumed)",
    "failed": "Failed",
}


def clock(seconds: float | None) -> str:
    """``m:ss`` or ``h:mm:ss`` ("–" when unknown)."""
    if seconds is None:
        return "–"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe_analysis_progress(progress: Any, state: str) -> str:
    """How far the live analysis is behind the camera, for the state line.

    Parameters
    ----------
    progress : analysis.live.AnalysisProgress or None
        ``session.analysis.progress()`` (None: the scan runs without analysis).
    state : str
        The panel's state (the final analysis reads differently).
    """
    if progress is None:
        return ""
    behind, done, stored = progress.tiles_behind, progress.tiles_analysed, progress.tiles_stored
    if state == "finalizing":
        return (
            f"Analysis: {behind} of {stored} tiles still to analyse"
            if behind
            else "Analysis: writing results"
        )
    if behind == 0:
        return f"Analysis: up to date ({done} of {stored} tiles stored)"
    lag = f"{behind} tiles ({progress.behind_s:.1f} s)"
    return f"Analysis: {lag} behind the camera ({done} of {stored} analysed)"


class _ScanBridge(QObject):
    """Scan-thread and analysis-thread signals re-emitted as Qt signals (queued to the Qt thread)."""

    state_changed = pyqtSignal(str)
    progress = pyqtSignal(object)
    message = pyqtSignal(str, str)
    finished = pyqtSignal(object)
    maps_updated = pyqtSignal(str)
    tile_stored = pyqtSignal(str, int)

    def attach(self, session: ScanSession) -> None:
        # psygnal keeps plain functions strongly; each one only emits a Qt signal
        ev = session.events
        ev.state_changed.connect(lambda state: self.state_changed.emit(state))
        ev.progress.connect(lambda p: self.progress.emit(p))
        ev.message.connect(lambda level, text: self.message.emit(level, text))
        ev.finished.connect(lambda result: self.finished.emit(result))
        ev.tile_stored.connect(lambda stored: self.tile_stored.emit(stored.section_id, stored.tile_index))
        ev.maps_updated.connect(lambda sid, rows: self.maps_updated.emit(sid))


class ScanRun(QObject):
    """One scan session at a time, its signals on the Qt thread.

    Signals
    -------
    started(object)
        A session started (the :class:`~acquisition.session.ScanSession`).
    state_changed(str)
        The session's state ("preparing", "focusing", "scanning", "paused", "finalizing";
        "done" and "failed" arrive as ``finished``).
    progress(object)
        :class:`~acquisition.controller.ScanProgress`.
    message(level, text)
        The session's messages ("info" ones are progress notes).
    finished(object)
        :class:`~acquisition.session.SessionResult`.
    live_changed()
        A tile was stored or the live maps changed: the live view may redraw.
    resume_failed(str)
        A file could not be resumed; the text says why.
    """

    started = pyqtSignal(object)
    state_changed = pyqtSignal(str)
    progress = pyqtSignal(object)
    message = pyqtSignal(str, str)
    finished = pyqtSignal(object)
    live_changed = pyqtSignal()
    resume_failed = pyqtSignal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._session: ScanSession | None = None
        self._bridge: _ScanBridge | None = None
        #: which session the signals belong to (a resumed file makes a new one)
        self.generation = 0

    @property
    def session(self) -> ScanSession | None:
        """The current or last session."""
        return self._session

    def start(self, core: Any, plan: Any, *, overwrite: bool) -> ScanSession:
        """Scan ``plan`` with the live analysis process."""
        session = ScanSession(core, plan, overwrite=overwrite, analysis=AnalysisProcess)
        self._run(session)
        return session

    def resume(self, path: Path, core: Any, *, before_start: Callable[[ScanSession], None]) -> None:
        """Continue an interrupted scan file (its stored plan, its missing tiles); read off the Qt thread.

        ``before_start`` is called with the session on the Qt thread just before it starts.
        """

        def prepare() -> ScanSession:
            # reads the stored plan, repairing what a crash left behind (the GUI's readers wait)
            with file_lock(path):
                return ScanSession.resume(path, core, analysis=AnalysisProcess)

        def ready(session: ScanSession) -> None:
            before_start(session)
            self._run(session)

        run_for_widget(
            self,
            prepare,
            on_done=ready,
            on_error=lambda e: self.resume_failed.emit(f"cannot resume {path.name}: {e}"),
            name="cordscope-resume",
        )

    def pause(self) -> None:
        """Pause between images."""
        if self._session is not None:
            self._session.pause()

    def resume_scanning(self) -> None:
        """Continue after a pause."""
        if self._session is not None:
            self._session.resume_scanning()

    def abort(self, reason: str = "aborted by the user") -> None:
        """Stop after the current image; the file stays resumable."""
        if self._session is not None:
            self._session.abort(reason)

    def analysis_progress(self) -> Any:
        """How far the live analysis is behind the camera (None without a live analysis); cheap."""
        session = self._session
        analysis = None if session is None else session.analysis
        return None if analysis is None else analysis.progress()

    def _run(self, session: ScanSession) -> None:
        self.generation += 1
        self._session = session
        bridge = _ScanBridge(self)
        bridge.state_changed.connect(self.state_changed)
        bridge.progress.connect(self.progress)
        bridge.message.connect(self.message)
        bridge.finished.connect(self.finished)
        bridge.maps_updated.connect(lambda _sid: self.live_changed.emit())
        bridge.tile_stored.connect(lambda _sid, _i: self.live_changed.emit())
        bridge.attach(session)
        if self._bridge is not None:
            self._bridge.deleteLater()
        self._bridge = bridge
        self.started.emit(session)
        session.start()
