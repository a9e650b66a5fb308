"""The scan panel: plan settings, start / pause / resume / abort, progress and live results.

The panel lays out three parts, each in its own module: the plan form
(:class:`~gui.scan_form.ScanForm`: settings, validation next to each field),
the running session (:class:`~gui.scan_run.ScanRun`: a
:class:`~acquisition.session.ScanSession` with the live analysis process,
its signals on the Qt thread) and the live results
(:class:`~gui.live_follow.LiveFollow`: the section being scanned, redrawn on a
timer, editable once the final analysis is saved). The state line says how far
the live analysis is behind the camera (``session.analysis.progress()``, read on
the live timer). Nothing here waits on the microscope or the disk on the Qt
thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from acquisition.controller import ScanProgress
from acquisition.plan import ScanPlan
from acquisition.session import ScanSession, SessionResult

from .live_follow import LIVE_REFRESH_MS, LiveFollow
from .region_editor import RegionEditor
from .scan_form import ScanForm, default_output_path
from .scan_run import RUNNING_STATES, STATE_LABELS, ScanRun, clock, describe_analysis_progress
from .workers import run_for_widget

__all__ = ["LIVE_REFRESH_MS", "ScanPanel", "default_output_path"]

logger = logging.getLogger(__name__)


class ScanPanel(QWidget):
    """Plan a scan of the slide panel's sections, run it and watch it live.

    Signals
    -------
    message(level, text)
        For the window's log and status ("info", "warning", "error").
    scan_finished(path)
        The scan file after a scan ended (finished, aborted or failed with
        tiles acquired) and its final analysis was written.
    state_changed(state)
        "idle", "starting", the session's "preparing", "focusing", "scanning", "paused",
        "finalizing" (final analysis), then how the scan ended: "finished", "aborted" or "failed".
    """

    message = pyqtSignal(str, str)
    scan_finished = pyqtSignal(str)
    state_changed = pyqtSignal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._core: Any = None
        self._state = "idle"
        self._last_result: SessionResult | None = None
        self._resumable: Path | None = None
        self.form = ScanForm()
        self.run = ScanRun(self)
        self.live_follow = LiveFollow()
        #: the live section display (a region editor once the final analysis is saved)
        self.live: RegionEditor = self.live_follow.live
        self._build()
        self.form.checked.connect(self._update_buttons)
        self.run.started.connect(self._on_started)
        self.run.state_changed.connect(self._on_state)
        self.run.progress.connect(self._on_progress)
        self.run.message.connect(self._on_scan_message)
        self.run.finished.connect(self._on_finished)
        self.run.live_changed.connect(self.live_follow.mark_changed)
        self.run.resume_failed.connect(self._resume_failed)
        self.live_follow.tick.connect(self._show_analysis_progress)
        self.live_follow.message.connect(self.message)
        self._update_buttons()

    def _build(self) -> None:
        self.start_button = QPushButton("Start scan")
        self.start_button.setToolTip("Scan the sections of the slide panel with this plan")
        self.pause_button = QPushButton("Pause")
        self.resume_button = QPushButton("Resume")
        self.abort_button = QPushButton("Abort")
        self.abort_button.setToolTip("Stop after the current image; the file stays resumable")
        self.resume_file_button = QPushButton("Resume a scan file…")
        self.resume_file_button.setToolTip(
            "Continue an interrupted scan file: only missing tiles are acquired"
        )
        self.resume_last_button = QPushButton("Resume this scan")
        self.resume_last_button.setToolTip("Continue the scan that was just aborted or stopped")
        self.save_plan_button = QPushButton("Save plan…")
        self.save_plan_button.setToolTip("Save the plan as YAML (for `cordscope scan PLAN.yaml`)")
        buttons = QGridLayout()
        buttons.addWidget(self.start_button, 0, 0, 1, 3)
        buttons.addWidget(self.pause_button, 1, 0)
        buttons.addWidget(self.resume_button, 1, 1)
        buttons.addWidget(self.abort_button, 1, 2)
        buttons.addWidget(self.resume_last_button, 2, 0, 1, 2)
        buttons.addWidget(self.resume_file_button, 2, 2)
        buttons.addWidget(self.save_plan_button, 3, 2)
        font = self.start_button.font()
        font.setBold(True)
        self.start_button.setFont(font)
        self.start_button.setMinimumHeight(32)

        self.state_label = QLabel("Idle")
        bold = self.state_label.font()
        bold.setBold(True)
        self.state_label.setFont(bold)
        self.analysis_label = QLabel("")
        self.analysis_label.setToolTip(
            "The live analysis runs beside the scan and may fall behind the camera; it never slows the "
            "scan down, and what it has not reached when the scan ends it finishes then"
        )
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%v / %m tiles")
        self.progress_label = QLabel("")
        self.section_table = QTableWidget(0, 3)
        self.section_table.setHorizontalHeaderLabels(["Section", "Tiles done", "Failed"])
        self.section_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.section_table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.section_table.verticalHeader().setVisible(False)  # type: ignore[union-attr]
        header = self.section_table.horizontalHeader()
        assert header is not None
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.section_table.setMinimumHeight(90)
        progress_box = QGroupBox("Progress")
        pl = QVBoxLayout(progress_box)
        for w in (self.state_label, self.analysis_label, self.progress_bar, self.progress_label):
            pl.addWidget(w)
        pl.addWidget(self.section_table, 1)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.form)
        ll.addLayout(buttons)
        ll.addWidget(progress_box, 1)
        scroll = QScrollArea()
        scroll.setWidget(left)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(440)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(scroll)
        splitter.addWidget(self.live_follow)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([450, 1000])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

        self.start_button.clicked.connect(self.start_scan)
        self.pause_button.clicked.connect(self.run.pause)
        self.resume_button.clicked.connect(self.run.resume_scanning)
        self.abort_button.clicked.connect(self.abort_scan)
        self.resume_file_button.clicked.connect(self._browse_resume_file)
        self.resume_last_button.clicked.connect(self._resume_last)
        self.save_plan_button.clicked.connect(self._browse_save_plan)

    # ============================================================ public API

    def set_core(self, core: Any) -> None:
        """Use this core for the next scan (``None``: no microscope loaded)."""
        if self.is_running() and core is not self._core and self.run.session is not None:
            # the window unloads the hardware (closing, or another config): stop; the file stays resumable
            self.run.abort("the hardware was unloaded")
        self._core = core
        self.form.set_core(core)
        self._update_buttons()

    def set_sections(self, sections: list[dict[str, Any]]) -> None:
        """Scan these sections (SectionPlan dicts from the slide panel) next."""
        self.form.set_sections(sections)

    def sections(self) -> list[dict[str, Any]]:
        """The sections the next scan covers (as given to :meth:`set_sections`)."""
        return self.form.sections()

    def plan(self) -> ScanPlan:
        """The plan the form describes now (raises :class:`~acquisition.plan.PlanError`)."""
        return self.form.plan()

    def set_plan(self, plan: ScanPlan) -> None:
        """Fill the form from a plan (e.g. the one stored in a scan file to resume)."""
        self.form.set_plan(plan)

    def is_running(self) -> bool:
        """Whether a scan (or its final analysis) is in progress."""
        return self._state in (*RUNNING_STATES, "finalizing", "starting")

    def is_ready(self) -> bool:
        """Whether the form holds a plan that passed every check (Start is enabled)."""
        return self.form.ready_plan() is not None and not self.is_running()

    @property
    def state(self) -> str:
        """The scan's state as shown (see :attr:`state_changed`)."""
        return self._state

    @property
    def session(self) -> ScanSession | None:
        """The session of the current or last scan."""
        return self.run.session

    @property
    def resumable_path(self) -> Path | None:
        """The last scan's file if it stopped before its end and can be resumed."""
        return self._resumable

    def shown_section(self) -> str | None:
        """The section the live view shows."""
        return self.live_follow.shown_section()

    def start_scan(self) -> bool:
        """Start the form's plan (what the Start button does); False if it cannot start."""
        if self.is_running():
            return False
        plan = self.form.ready_plan()
        if plan is None:
            self.form.validate()
            self.message.emit(
                "warning", "the scan settings have problems: see the messages in the scan panel"
            )
            return False
        core, overwrite = self._core, self.form.overwrite
        self._set_state("starting")
        # the last scan's live view may be reading its file: start once it is done
        self.live_follow.when_idle(lambda: self._announce(self.run.start(core, plan, overwrite=overwrite)))
        return True

    def resume_scan(self, path: str | Path) -> None:
        """Continue an interrupted scan file: only its missing tiles are acquired (read off the Qt thread)."""
        if self.is_running() or self._core is None:
            return
        file, core = Path(path), self._core
        self._set_state("starting")

        def before_start(session: ScanSession) -> None:
            self.form.set_plan(session.plan)
            self.message.emit("info", f"resuming {file}")

        self.live_follow.when_idle(lambda: self.run.resume(file, core, before_start=before_start))

    def pause_scan(self) -> None:
        """Pause between images."""
        self.run.pause()

    def resume_scanning(self) -> None:
        """Continue after a pause."""
        self.run.resume_scanning()

    def abort_scan(self) -> None:
        """Stop after the current image; the file stays resumable."""
        if self._state in RUNNING_STATES:
            self.run.abort("aborted by the user")
            self.message.emit("info", "abort requested: stopping after the current image")

    def save_plan(self, path: Path) -> None:
        """Write the form's plan as YAML (off the Qt thread)."""
        plan = self.form.checked_plan()
        if plan is None:
            self.message.emit("error", "the plan has problems; fix them before saving it")
            return
        from acquisition.plan import save_plan

        run_for_widget(
            self,
            lambda: save_plan(plan, path),
            on_done=lambda _: self.message.emit("info", f"plan saved: {path}"),
            on_error=lambda e: self.message.emit("error", f"cannot save the plan to {path}: {e}"),
            name="cordscope-save-plan",
        )

    def section_progress(self) -> dict[str, tuple[str, str]]:
        """The per-section table as shown: section id → (done / total, failed)."""
        out = {}
        for i in range(self.section_table.rowCount()):
            cells = [self.section_table.item(i, j) for j in range(3)]
            if all(c is not None for c in cells):
                out[cells[0].text()] = (cells[1].text(), cells[2].text())  # type: ignore[union-attr]
        return out

    # ============================================================ the session

    def _announce(self, session: ScanSession) -> None:
        self.message.emit("info", f"scan started: {session.plan.name} → {session.plan.output}")

    def _on_started(self, session: ScanSession) -> None:
        self._last_result, self._resumable = None, None
        self._fill_section_table({s.id: (0, 0, 0) for s in session.plan.sections})
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_label.setText("")
        self.analysis_label.setText("")
        self.live_follow.begin(session)
        self._set_state("preparing")

    def _on_state(self, state: str) -> None:
        if state in ("done", "failed"):
            return  # the end is shown by _on_finished, with how the scan ended
        self._set_state(state)

    def _on_progress(self, p: ScanProgress) -> None:
        self.progress_bar.setRange(0, max(p.tiles_total, 1))
        self.progress_bar.setValue(p.tiles_done + p.tiles_failed)
        failed = f" · {p.tiles_failed} failed" if p.tiles_failed else ""
        where = f"{p.current_section} · " if p.current_section else ""
        eta = f" · ETA {clock(p.eta_s)}" if p.state in ("scanning", "paused") else ""
        elapsed = f" · elapsed {clock(p.elapsed_s)}"
        self.progress_label.setText(
            f"{where}{p.tiles_done} of {p.tiles_total} tiles done{failed}{elapsed}{eta}"
        )
        self._fill_section_table({sid: (s.done, s.failed, s.total) for sid, s in p.sections.items()})
        self.live_follow.scan_reached(p.current_section)

    def _show_analysis_progress(self) -> None:
        self.analysis_label.setText(describe_analysis_progress(self.run.analysis_progress(), self._state))

    def _fill_section_table(self, rows: dict[str, tuple[int, int, int]]) -> None:
        table = self.section_table
        table.setRowCount(len(rows))
        for i, (sid, (done, failed, total)) in enumerate(rows.items()):
            for j, text in enumerate((sid, f"{done} / {total}" if total else "–", str(failed))):
                item = table.item(i, j)
                if item is None:
                    item = QTableWidgetItem()
                    if j:
                        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    table.setItem(i, j, item)
                item.setText(text)
                if j == 2:
                    item.setForeground(Qt.GlobalColor.red if failed else self.palette().text().color())

    def _on_scan_message(self, level: str, text: str) -> None:
        if level == "info":
            # progress notes (focus map points): shown here; the controller also logs them
            if self._state in ("preparing", "focusing"):
                self.progress_label.setText(text)
            return
        self.message.emit(level, text)

    def _on_finished(self, session_result: SessionResult) -> None:
        self._last_result = session_result
        result = session_result.scan
        self.progress_bar.setRange(0, max(result.tiles_total, 1))
        self.progress_bar.setValue(result.tiles_done + result.tiles_failed)
        summary = (
            f"scan {result.state}: {result.tiles_done} of {result.tiles_total} tiles done"
            + (f", {result.tiles_failed} failed" if result.tiles_failed else "")
            + (
                f", {result.tiles_retaken} retaken out of focus ({result.retake_time_s:.0f} s)"
                if result.tiles_retaken
                else ""
            )
            + f" in {clock(result.elapsed_s)}"
        )
        self.progress_label.setText(summary[0].upper() + summary[1:])
        level = {"finished": "info", "aborted": "warning"}.get(result.state, "error")
        self.message.emit(
            level if result.state != "finished" or not result.tiles_failed else "warning", summary
        )
        if not result.complete and result.tiles_total and Path(result.path).is_file():
            # stopped early or with failed tiles: resuming acquires what is missing
            self._resumable = Path(result.path)
        analysed = session_result.tables is not None
        if analysed:
            from analysis.results_format import region_csv_path

            path = Path(result.path)
            self.message.emit("info", f"analysis written into {path.name} and {region_csv_path(path).name}")
            self.analysis_label.setText(f"Analysis: all {result.tiles_done} tiles analysed and saved")
        else:
            self.analysis_label.setText("")
        if result.tiles_done and Path(result.path).is_file():
            path = Path(result.path)
            self._set_state(result.state)
            self.live_follow.end(path if analysed else None)
            self.form.next_output_after(path)  # the next scan gets a new file instead of "already exists"
            self.scan_finished.emit(str(path))
        else:
            self.live_follow.end(None)
            self._set_state(result.state)

    def _resume_failed(self, text: str) -> None:
        self._set_state("idle")
        self.message.emit("error", text)

    # ================================================================ buttons

    def _update_buttons(self) -> None:
        running = self.is_running()
        self.start_button.setEnabled(self.is_ready())
        self.pause_button.setEnabled(self._state == "scanning")
        self.resume_button.setEnabled(self._state == "paused")
        self.abort_button.setEnabled(self._state in RUNNING_STATES)
        self.resume_file_button.setEnabled(not running and self._core is not None)
        self.resume_last_button.setEnabled(
            not running and self._core is not None and self._resumable is not None
        )
        self.save_plan_button.setEnabled(self.form.checked_plan() is not None)
        self.form.setEnabled(not running)

    def _set_state(self, state: str) -> None:
        self._state = state
        self.state_label.setText(STATE_LABELS.get(state, state))
        self._update_buttons()
        self.state_changed.emit(state)

    # ================================================================ dialogs

    def _resume_last(self) -> None:
        if self._resumable is not None:
            self.resume_scan(self._resumable)

    def _browse_resume_file(self) -> None:
        folder = str(Path(self.form.output_edit.text()).parent)
        path, _ = QFileDialog.getOpenFileName(self, "Resume a scan file", folder, "CordScope scan (*.h5)")
        if path:
            self.resume_scan(path)

    def _browse_save_plan(self) -> None:
        if self.form.checked_plan() is None:
            return
        suggestion = str(Path(self.form.output_edit.text()).with_suffix(".plan.yaml"))
        path, _ = QFileDialog.getSaveFileName(self, "Save plan", suggestion, "Scan plan (*.yaml *.yml)")
        if path:
            self.save_plan(Path(path))
