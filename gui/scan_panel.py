"""The scan panel: plan settings, start / pause / resume / abort, progress and live results.

The panel turns its form and the slide panel's sections into a
:class:`~acquisition.plan.ScanPlan` (``plan_from_dict``), shows each
validation problem next to the field it concerns, and runs the plan as a
:class:`~acquisition.session.ScanSession` with an
:class:`~analysis.live.AnalysisProcess` (the live analysis in its own
process, so the scan keeps its speed). The session signals from its own
threads; :class:`_ScanBridge` re-emits those signals as Qt signals, which Qt
queues to the Qt thread. Nothing here waits on the
microscope or the disk on the Qt thread: hardware validation, opening a file
to resume, the live snapshots and the final analysis run through
:func:`gui.workers.run_in_thread`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from pathlib import Path
from typing import Any

from PyQt6.QtCore import QObject, Qt, QTimer, pyqtSignal
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from acquisition.controller import ScanProgress
from acquisition.hardware import config_presets, objective_group
from acquisition.plan import (
    DEFAULT_HARDWARE_CONFIG,
    PlanError,
    PlanProblem,
    ScanPlan,
    plan_from_dict,
    validate_plan,
)
from acquisition.session import ScanSession, SessionResult
from analysis.live import AnalysisProcess
from analysis.section_analysis import LiveSnapshot

from .live_view import SectionDisplay, SectionPicture, render_section
from .workers import Job, run_for_widget

__all__ = ["LIVE_REFRESH_MS", "ScanPanel", "default_output_path"]

logger = logging.getLogger(__name__)

#: Live view refresh period while scanning (ms): 4 Hz.
LIVE_REFRESH_MS = 250
#: Quiet time after the last edit before the plan is validated again (ms).
VALIDATE_DELAY_MS = 250
#: Channel presets preselected with their role and exposure (the demo's fluorophores).
DEFAULT_CHANNELS: dict[str, tuple[str, float]] = {"DAPI": ("anatomy", 20.0), "tdTomato": ("tracer", 50.0)}
ROLES = ("tracer", "anatomy", "other")
_RUNNING_STATES = ("preparing", "focusing", "scanning", "paused")
_ERROR_STYLE = "color: #d32f2f;"


def default_output_path(name: str = "scan", folder: Path | None = None) -> Path:
    """A new scan file name: ``~/CordScope-scans/<name>-<YYYYmmdd-HHMMSS>.h5`` (or in ``folder``)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "scan"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return (folder or Path.home() / "CordScope-scans") / f"{stem}-{stamp}.h5"


def _free_name(path: Path) -> Path:
    """Return ``path`` if no file has that name, else ``<stem>-2<suffix>``, ``-3``, and so on."""
    if not path.exists():
        return path
    stem = re.sub(r"-\d+$", "", path.stem)
    n = 2
    while (candidate := path.with_name(f"{stem}-{n}{path.suffix}")).exists():
        n += 1
    return candidate


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _error_label() -> QLabel:
    label = QLabel("")
    label.setStyleSheet(_ERROR_STYLE)
    label.setWordWrap(True)
    label.setVisible(False)
    return label


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


@dataclasses.dataclass
class _ChannelRow:
    preset: str
    use: QCheckBox
    exposure_ms: QDoubleSpinBox
    role: QComboBox
    error: QLabel


class ScanPanel(QWidget):
    """Plan a scan of the slide panel's sections, run it and watch it live.

    Signals
    -------
    message(level, text)
        For the window's log and status ("info", "warning", "error").
    scan_finished(path)
        The scan file after a scan ended (finished, aborted or failed with
        tiles acquired) and its final analysis was written.
    """

    message = pyqtSignal(str, str)
    scan_finished = pyqtSignal(str)
    #: The scan's state: "idle", "starting", the session's "preparing", "focusing", "scanning",
    #: "paused", "finalizing" (final analysis), then how the scan ended: "finished", "aborted"
    #: or "failed".
    state_changed = pyqtSignal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._core: Any = None
        self._sections: list[dict[str, Any]] = []
        self._channel_rows: list[_ChannelRow] = []
        self._plan: ScanPlan | None = None  # the form's plan, when it validated
        self._hardware_ok = False
        self._validation_generation = 0
        self._session: ScanSession | None = None
        self._bridge: _ScanBridge | None = None
        self._state = "idle"
        self._last_result: SessionResult | None = None
        self._resumable: Path | None = None
        self._live_dirty = False
        self._live_job_running = False
        self._current_section: str | None = None
        self._section_labels: dict[str, str] = {}
        self._output_edited = False
        self._analysis_extra: dict[str, Any] = {}  # analysis settings of a loaded plan, kept as they were
        self._after_live: list[Any] = []
        self._scan_generation = 0  # run once the live view's job is done
        self._build()
        self._validate_timer = QTimer(self)
        self._validate_timer.setSingleShot(True)
        self._validate_timer.setInterval(VALIDATE_DELAY_MS)
        self._validate_timer.timeout.connect(self.validate)
        self._live_timer = QTimer(self)
        self._live_timer.setInterval(LIVE_REFRESH_MS)
        self._live_timer.timeout.connect(self._refresh_live)
        self._update_buttons()
        self.validate()

    # ================================================================= layout

    def _build(self) -> None:
        # ---- plan settings
        self.name_edit = QLineEdit("slide scan")
        self.name_error = _error_label()
        self.objective_combo = QComboBox()
        self.objective_error = _error_label()
        self.channels_box = QWidget()
        self.channels_grid = QGridLayout(self.channels_box)
        self.channels_grid.setContentsMargins(0, 0, 0, 0)
        self.channels_error = _error_label()
        self.overlap_spin = QDoubleSpinBox()
        self.overlap_spin.setRange(0.0, 90.0)
        self.overlap_spin.setDecimals(1)
        self.overlap_spin.setSuffix(" %")
        self.overlap_spin.setValue(10.0)
        self.overlap_error = _error_label()
        self.focus_combo = QComboBox()
        self.focus_combo.addItem("Focus map (autofocus per section)", "focus_map")
        self.focus_combo.addItem("Fixed focus", "fixed")
        self.focus_points_spin = QSpinBox()
        self.focus_points_spin.setRange(0, 200)
        self.focus_points_spin.setValue(5)
        self.focus_points_spin.setSuffix(" points / section")
        self.focus_z_spin = QDoubleSpinBox()
        self.focus_z_spin.setRange(-100000.0, 100000.0)
        self.focus_z_spin.setDecimals(1)
        self.focus_z_spin.setSuffix(" µm")
        self.focus_z_spin.setSpecialValueText("current focus")
        self.focus_z_spin.setValue(self.focus_z_spin.minimum())
        self.focus_z_spin.setToolTip(
            "Focus drive position: the scan plane (fixed) or the centre of the autofocus search "
            "(focus map). 'current focus': where the focus is when the scan starts."
        )
        self.focus_error = _error_label()
        self.retries_spin = QSpinBox()
        self.retries_spin.setRange(0, 20)
        self.retries_spin.setValue(2)
        self.retries_spin.setToolTip("Retries of a failing device call before the tile is marked failed")
        self.retries_error = _error_label()
        self.register_check = QCheckBox("Register tiles (align overlaps by phase correlation)")
        self.register_check.setChecked(True)
        self.register_check.setToolTip(
            "Place tiles at positions measured from their overlaps (slower final analysis); "
            "off: tiles stay where the stage put them"
        )
        self.analysis_error = _error_label()
        self.output_edit = QLineEdit(str(default_output_path()))
        self.output_browse = QPushButton("Browse…")
        self.overwrite_check = QCheckBox("Overwrite an existing file")
        self.output_error = _error_label()
        self.sections_label = QLabel("")
        self.sections_label.setWordWrap(True)
        self.sections_error = _error_label()
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        self.general_error = _error_label()

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Scan name", self._stack(self.name_edit, self.name_error))
        form.addRow("Objective", self._stack(self.objective_combo, self.objective_error))
        form.addRow("Channels", self._stack(self.channels_box, self.channels_error))
        form.addRow("Tile overlap", self._stack(self.overlap_spin, self.overlap_error))
        focus_row = QWidget()
        fl = QGridLayout(focus_row)
        fl.setContentsMargins(0, 0, 0, 0)
        fl.addWidget(self.focus_combo, 0, 0, 1, 2)
        fl.addWidget(self.focus_points_spin, 1, 0)
        fl.addWidget(self.focus_z_spin, 1, 1)
        form.addRow("Focus", self._stack(focus_row, self.focus_error))
        form.addRow("Retries", self._stack(self.retries_spin, self.retries_error))
        form.addRow("Analysis", self._stack(self.register_check, self.analysis_error))
        out_row = QWidget()
        ol = QHBoxLayout(out_row)
        ol.setContentsMargins(0, 0, 0, 0)
        ol.addWidget(self.output_edit, 1)
        ol.addWidget(self.output_browse)
        form.addRow("Output file", self._stack(out_row, self.overwrite_check, self.output_error))
        form.addRow("Sections", self._stack(self.sections_label, self.sections_error))
        self.settings_box = QGroupBox("Scan plan")
        settings_layout = QVBoxLayout(self.settings_box)
        settings_layout.addLayout(form)
        settings_layout.addWidget(self.summary_label)
        settings_layout.addWidget(self.general_error)

        # ---- controls
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

        # ---- progress
        self.state_label = QLabel("Idle")
        bold = self.state_label.font()
        bold.setBold(True)
        self.state_label.setFont(bold)
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
        pl.addWidget(self.state_label)
        pl.addWidget(self.progress_bar)
        pl.addWidget(self.progress_label)
        pl.addWidget(self.section_table, 1)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.settings_box)
        ll.addLayout(buttons)
        ll.addWidget(progress_box, 1)
        scroll = QScrollArea()
        scroll.setWidget(left)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(440)

        # ---- live results
        self.section_combo = QComboBox()
        self.follow_check = QCheckBox("Follow the scan")
        self.follow_check.setChecked(True)
        self.follow_check.setToolTip("Show the section being scanned")
        self.live = SectionDisplay()
        live_box = QGroupBox("Live results")
        lb = QVBoxLayout(live_box)
        top = QHBoxLayout()
        top.addWidget(QLabel("Section"))
        top.addWidget(self.section_combo, 1)
        top.addWidget(self.follow_check)
        lb.addLayout(top)
        lb.addWidget(self.live, 1)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(scroll)
        splitter.addWidget(live_box)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([450, 1000])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

        # ---- connections
        for edit in (self.name_edit,):
            edit.textChanged.connect(self._changed)
        self.output_edit.textEdited.connect(self._output_was_edited)
        self.output_edit.textChanged.connect(self._changed)
        for combo in (self.objective_combo, self.focus_combo):
            combo.currentIndexChanged.connect(self._changed)
        for spin in (self.overlap_spin, self.focus_z_spin):
            spin.valueChanged.connect(self._changed)
        for ispin in (self.focus_points_spin, self.retries_spin):
            ispin.valueChanged.connect(self._changed)
        self.overwrite_check.toggled.connect(self._changed)
        self.register_check.toggled.connect(self._changed)
        self.focus_combo.currentIndexChanged.connect(self._focus_strategy_changed)
        self.output_browse.clicked.connect(self._browse_output)
        self.start_button.clicked.connect(self.start_scan)
        self.pause_button.clicked.connect(self.pause_scan)
        self.resume_button.clicked.connect(self.resume_scanning)
        self.abort_button.clicked.connect(self.abort_scan)
        self.resume_file_button.clicked.connect(self._browse_resume_file)
        self.resume_last_button.clicked.connect(self._resume_last)
        self.save_plan_button.clicked.connect(self._browse_save_plan)
        self.section_combo.activated.connect(self._section_chosen)
        self.follow_check.toggled.connect(self._follow_toggled)
        self._focus_strategy_changed()

    @staticmethod
    def _stack(*widgets: QWidget) -> QWidget:
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 0)
        v.setSpacing(2)
        for w in widgets:
            v.addWidget(w)
        return box

    def _in_thread(
        self,
        fn: Any,
        *,
        on_done: Any = None,
        on_error: Any = None,
        name: str = "cordscope-job",
    ) -> Job:
        """Run ``fn`` off the Qt thread; its callbacks are dropped if this panel was deleted meanwhile."""
        return run_for_widget(self, fn, on_done=on_done, on_error=on_error, name=name)

    # ========================================================== public API

    def set_core(self, core: Any) -> None:
        """Use this core for the next scan (``None``: no microscope loaded)."""
        if self.is_running() and core is not self._core and self._session is not None:
            # the window unloads the hardware (closing, or another config): stop; the file stays resumable
            self._session.abort("the hardware was unloaded")
        self._core = core
        self._fill_hardware_choices()
        self._update_buttons()
        self.validate()

    def set_sections(self, sections: list[dict[str, Any]]) -> None:
        """Scan these sections (SectionPlan dicts from the slide panel) next."""
        self._sections = [dict(s) for s in sections]
        ids = [str(s.get("id", "?")) for s in self._sections]
        if not ids:
            self.sections_label.setText("none yet: find or draw sections in the slide panel")
        else:
            shown = ", ".join(ids[:6]) + (f", … ({len(ids)} in all)" if len(ids) > 6 else "")
            self.sections_label.setText(f"{len(ids)} from the slide panel: {shown}")
        self.validate()

    def sections(self) -> list[dict[str, Any]]:
        """The sections the next scan covers (as given to :meth:`set_sections`)."""
        return [dict(s) for s in self._sections]

    def is_running(self) -> bool:
        """Whether a scan (or its final analysis) is in progress."""
        return self._state in (*_RUNNING_STATES, "finalizing", "starting")

    @property
    def state(self) -> str:
        """The scan's state as shown (see :attr:`state_changed`)."""
        return self._state

    @property
    def session(self) -> ScanSession | None:
        """The session of the current or last scan."""
        return self._session

    @property
    def resumable_path(self) -> Path | None:
        """The last scan's file if it stopped before its end and can be resumed."""
        return self._resumable

    def plan(self) -> ScanPlan:
        """The plan the form describes now.

        Raises
        ------
        PlanError
            With every problem of the settings (also shown next to the fields).
        """
        return plan_from_dict(self._plan_dict(), source="scan settings")

    def set_plan(self, plan: ScanPlan) -> None:
        """Fill the form from a plan (e.g. the one stored in a scan file to resume)."""
        self.name_edit.setText(plan.name)
        if (i := self.objective_combo.findText(plan.objective)) >= 0:
            self.objective_combo.setCurrentIndex(i)
        by_preset = {ch.preset: ch for ch in plan.channels}
        for row in self._channel_rows:
            ch = by_preset.get(row.preset)
            row.use.setChecked(ch is not None)
            if ch is not None:
                row.exposure_ms.setValue(ch.exposure_ms)
                row.role.setCurrentText(ch.role)
        self.overlap_spin.setValue(plan.overlap_pct)
        self.focus_combo.setCurrentIndex(max(0, self.focus_combo.findData(plan.focus.strategy)))
        self.focus_points_spin.setValue(plan.focus.points_per_section)
        z = plan.focus.z_um
        self.focus_z_spin.setValue(self.focus_z_spin.minimum() if z is None else z)
        self.retries_spin.setValue(plan.reliability.max_retries)
        # the form shows registration; the plan's other analysis settings are kept as they were set
        self._analysis_extra = plan.analysis.model_dump(
            mode="json", exclude={"register_tiles"}, exclude_defaults=True
        )
        self.register_check.setChecked(plan.analysis.register_tiles)
        self.output_edit.setText(str(plan.output))
        self.set_sections([s.model_dump(mode="json") for s in plan.sections])

    # ============================================================== the form

    def _fill_hardware_choices(self) -> None:
        core = self._core
        current_objective = self.objective_combo.currentText()
        self.objective_combo.blockSignals(True)
        self.objective_combo.clear()
        if core is not None:
            group = objective_group(core)
            self.objective_combo.addItems(list(config_presets(core, group)))
            wanted = current_objective or "10x"
            if (i := self.objective_combo.findText(wanted)) >= 0:
                self.objective_combo.setCurrentIndex(i)
        self.objective_combo.blockSignals(False)
        previous = {
            r.preset: (r.use.isChecked(), r.exposure_ms.value(), r.role.currentText())
            for r in self._channel_rows
        }
        while self.channels_grid.count():
            item = self.channels_grid.takeAt(0)
            if item is not None and (w := item.widget()) is not None:
                w.deleteLater()
        self._channel_rows = []
        presets = list(config_presets(core, self._channel_group())) if core is not None else []
        for i, preset in enumerate(presets):
            role_default, exposure_default = DEFAULT_CHANNELS.get(preset, ("other", 50.0))
            use, exposure, role = previous.get(
                preset, (preset in DEFAULT_CHANNELS, exposure_default, role_default)
            )
            check = QCheckBox(preset)
            check.setChecked(use)
            spin = QDoubleSpinBox()
            spin.setRange(0.0, 100000.0)
            spin.setDecimals(1)
            spin.setSuffix(" ms")
            spin.setValue(exposure)
            spin.setToolTip(f"Exposure of {preset}")
            combo = QComboBox()
            combo.addItems(list(ROLES))
            combo.setCurrentText(role)
            combo.setToolTip(
                "tracer: the labelled axons analysed; anatomy: the counterstain (outlines, focus)"
            )
            err = _error_label()
            self.channels_grid.addWidget(check, 2 * i, 0)
            self.channels_grid.addWidget(spin, 2 * i, 1)
            self.channels_grid.addWidget(combo, 2 * i, 2)
            self.channels_grid.addWidget(err, 2 * i + 1, 0, 1, 3)
            check.toggled.connect(self._changed)
            spin.valueChanged.connect(self._changed)
            combo.currentIndexChanged.connect(self._changed)
            self._channel_rows.append(_ChannelRow(preset, check, spin, combo, err))

    def _channel_group(self) -> str:
        core = self._core
        if core is None:
            return "Channel"
        return str(core.getChannelGroup() or "Channel")

    def channel_row(self, preset: str) -> _ChannelRow:
        """The form row of one channel preset (tests and the screenshot driver use it)."""
        for row in self._channel_rows:
            if row.preset == preset:
                return row
        raise KeyError(preset)

    def _used_channel_rows(self) -> list[_ChannelRow]:
        return [r for r in self._channel_rows if r.use.isChecked()]

    def _plan_dict(self) -> dict[str, Any]:
        core = self._core
        config = DEFAULT_HARDWARE_CONFIG
        if core is not None and (cfg := core.systemConfigurationFile()):
            config = Path(cfg)
        z = self.focus_z_spin.value()
        focus: dict[str, Any] = {
            "strategy": self.focus_combo.currentData(),
            "points_per_section": self.focus_points_spin.value(),
            "z_um": None if z == self.focus_z_spin.minimum() else z,
        }
        data: dict[str, Any] = {
            "name": self.name_edit.text().strip(),
            "hardware_config": str(config),
            "output": self.output_edit.text().strip(),
            "objective": self.objective_combo.currentText(),
            "channel_group": self._channel_group(),
            "channels": [
                {"preset": r.preset, "exposure_ms": r.exposure_ms.value(), "role": r.role.currentText()}
                for r in self._used_channel_rows()
            ],
            "overlap_pct": self.overlap_spin.value(),
            "focus": focus,
            "reliability": {"max_retries": self.retries_spin.value()},
            "sections": self._sections,
            "analysis": {**self._analysis_extra, "register_tiles": self.register_check.isChecked()},
        }
        if core is not None and (group := objective_group(core)):
            data["objective_group"] = group
        return data

    def _focus_strategy_changed(self) -> None:
        self.focus_points_spin.setEnabled(self.focus_combo.currentData() == "focus_map")

    def _output_was_edited(self, _text: str) -> None:
        self._output_edited = True

    def _changed(self, *_: Any) -> None:
        self._plan = None
        self._hardware_ok = False
        self._update_buttons()
        self._validate_timer.start()

    def _browse_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Scan file", self.output_edit.text(), "CordScope scan (*.h5)"
        )
        if path:
            if not path.endswith(".h5"):
                path += ".h5"
            self._output_edited = True
            self.output_edit.setText(path)

    # ============================================================ validation

    def _error_labels(self) -> list[QLabel]:
        fixed = [
            self.name_error,
            self.objective_error,
            self.channels_error,
            self.overlap_error,
            self.focus_error,
            self.retries_error,
            self.analysis_error,
            self.output_error,
            self.sections_error,
            self.general_error,
        ]
        return fixed + [r.error for r in self._channel_rows]

    def field_error(self, field: str) -> str:
        """The message shown next to a field ("" if none).

        ``field`` is one of name, objective, channels, overlap, focus, retries,
        analysis, output, sections, general, or a channel preset (e.g. ``"tdTomato"``).
        """
        labels = {
            "name": self.name_error,
            "objective": self.objective_error,
            "channels": self.channels_error,
            "overlap": self.overlap_error,
            "focus": self.focus_error,
            "retries": self.retries_error,
            "analysis": self.analysis_error,
            "output": self.output_error,
            "sections": self.sections_error,
            "general": self.general_error,
        }
        label = labels.get(field) or self.channel_row(field).error
        return label.text() if not label.isHidden() else ""

    def _label_for(self, problem: PlanProblem) -> tuple[QLabel, str]:
        """Which label shows a problem, and its text there (without the field path it sits beside)."""
        path = problem.field
        head = re.split(r"[.\[]", path, maxsplit=1)[0] if path else ""
        rest = path[len(head) :].lstrip(".")
        text = problem.message if not rest else f"{rest}: {problem.message}"
        if head == "channels":
            m = re.match(r"\[(\d+)\]\.?(.*)", rest)
            used = self._used_channel_rows()
            if m and int(m.group(1)) < len(used):
                sub = m.group(2)
                return used[int(m.group(1))].error, (f"{sub}: " if sub else "") + problem.message
            return self.channels_error, text
        simple = {
            "name": self.name_error,
            "objective": self.objective_error,
            "objective_group": self.objective_error,
            "channel_group": self.channels_error,
            "overlap_pct": self.overlap_error,
            "focus": self.focus_error,
            "reliability": self.retries_error,
            "analysis": self.analysis_error,
            "output": self.output_error,
        }
        if head in simple:
            return simple[head], text
        if head == "sections":
            m = re.match(r"\[(\d+)\]\.?(.*)", rest)
            if m and int(m.group(1)) < len(self._sections):
                sid = self._sections[int(m.group(1))].get("id", "?")
                sub = m.group(2)
                return self.sections_error, f"section {sid}" + (
                    f", {sub}" if sub else ""
                ) + f": {problem.message}"
            return self.sections_error, problem.message
        return self.general_error, str(problem)

    def _show_problems(self, problems: list[PlanProblem]) -> None:
        texts: dict[int, tuple[QLabel, list[str]]] = {}
        for p in problems:
            label, text = self._label_for(p)
            texts.setdefault(id(label), (label, []))[1].append(text)
        for label in self._error_labels():
            entry = texts.get(id(label))
            label.setText("\n".join(entry[1]) if entry else "")
            label.setVisible(entry is not None)

    def validate(self) -> None:
        """Check the form now: settings at once, then the hardware and disk off the Qt thread."""
        self._validate_timer.stop()
        self._validation_generation += 1
        generation = self._validation_generation
        self._plan, self._hardware_ok = None, False
        problems: list[PlanProblem] = []
        if self._core is None:
            problems.append(PlanProblem("", "no microscope: load a hardware configuration first"))
        if not self._sections:
            problems.append(
                PlanProblem("sections", "no sections to scan: find or draw them in the slide panel")
            )
        try:
            plan = self.plan()
        except PlanError as e:
            problems.extend(p for p in e.problems if not (p.field == "sections" and not self._sections))
            plan = None
        self._show_problems(problems)
        if plan is None or problems:
            self.summary_label.setText("")
            self._update_buttons()
            return
        self._plan = plan
        self.summary_label.setText("checking the plan against the microscope and the disk…")
        core, overwrite = self._core, self.overwrite_check.isChecked()
        self._in_thread(
            lambda: validate_plan(plan, core, overwrite=overwrite),
            on_done=lambda summary: self._hardware_checked(generation, summary, None),
            on_error=lambda e: self._hardware_checked(generation, None, e),
            name="cordscope-validate-plan",
        )
        self._update_buttons()

    def _hardware_checked(self, generation: int, summary: Any, error: BaseException | None) -> None:
        if generation != self._validation_generation:
            return  # the form changed since
        if error is not None:
            problems = error.problems if isinstance(error, PlanError) else [PlanProblem("", str(error))]
            self._show_problems(problems)
            self.summary_label.setText("")
            self._hardware_ok = False
        else:
            self._show_problems([])
            self._hardware_ok = True
            w, h = summary.tile_size_um
            self.summary_label.setText(
                f"{summary.total_tiles} tiles ({w:.0f} × {h:.0f} µm, {summary.pixel_size_um:.3g} µm/px) in "
                f"{len(summary.tiles_per_section)} sections, {summary.n_images} images, "
                f"about {_format_bytes(summary.estimated_bytes)}"
            )
        self._update_buttons()

    def is_ready(self) -> bool:
        """Whether the form holds a plan that passed every check (Start is enabled)."""
        return self._plan is not None and self._hardware_ok and not self.is_running()

    # ================================================================ buttons

    def _update_buttons(self) -> None:
        running = self.is_running()
        self.start_button.setEnabled(self.is_ready())
        self.pause_button.setEnabled(self._state == "scanning")
        self.resume_button.setEnabled(self._state == "paused")
        self.abort_button.setEnabled(self._state in _RUNNING_STATES)
        self.resume_file_button.setEnabled(not running and self._core is not None)
        self.resume_last_button.setEnabled(
            not running and self._core is not None and self._resumable is not None
        )
        self.save_plan_button.setEnabled(self._plan is not None)
        self.settings_box.setEnabled(not running)

    def _set_state(self, state: str) -> None:
        self._state = state
        labels = {
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
        self.state_label.setText(labels.get(state, state))
        self._update_buttons()
        self.state_changed.emit(state)

    # =================================================================== scan

    def start_scan(self) -> bool:
        """Start the form's plan (what the Start button does); False if it cannot start."""
        if self.is_running():
            return False
        if self._plan is None or not self._hardware_ok:
            self.validate()
            self.message.emit(
                "warning", "the scan settings have problems: see the messages in the scan panel"
            )
            return False
        plan = self._plan
        self._set_state("starting")
        # the last scan's live view may be reading its file: start once it is done
        self._when_live_idle(lambda: self._start_plan(plan))
        return True

    def _start_plan(self, plan: ScanPlan) -> None:
        session = ScanSession(
            self._core, plan, overwrite=self.overwrite_check.isChecked(), analysis=AnalysisProcess
        )
        self._run(session, f"scan started: {plan.name} → {plan.output}")

    def resume_scan(self, path: str | Path) -> None:
        """Continue an interrupted scan file: only its missing tiles are acquired (read off the Qt thread)."""
        if self.is_running() or self._core is None:
            return
        file = Path(path)
        core = self._core
        self._set_state("starting")

        def prepare() -> ScanSession:
            # reads the stored plan, repairing what a crash left behind
            return ScanSession.resume(file, core, analysis=AnalysisProcess)

        def started(session: ScanSession) -> None:
            self._set_state("idle")
            self.set_plan(session.plan)
            self._run(session, f"resuming {file}")

        def failed(e: BaseException) -> None:
            self._set_state("idle")
            self.message.emit("error", f"cannot resume {file.name}: {e}")

        self._when_live_idle(
            lambda: self._in_thread(prepare, on_done=started, on_error=failed, name="cordscope-resume")
        )

    def pause_scan(self) -> None:
        """Pause between images."""
        if self._session is not None:
            self._session.pause()

    def resume_scanning(self) -> None:
        """Continue after a pause."""
        if self._session is not None:
            self._session.resume_scanning()

    def abort_scan(self) -> None:
        """Stop after the current image; the file stays resumable."""
        if self._session is not None and self._state in _RUNNING_STATES:
            self._session.abort("aborted by the user")
            self.message.emit("info", "abort requested: stopping after the current image")

    def _resume_last(self) -> None:
        if self._resumable is not None:
            self.resume_scan(self._resumable)

    def _browse_resume_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Resume a scan file", str(Path(self.output_edit.text()).parent), "CordScope scan (*.h5)"
        )
        if path:
            self.resume_scan(path)

    def _browse_save_plan(self) -> None:
        if self._plan is None:
            return
        suggestion = str(Path(self.output_edit.text()).with_suffix(".plan.yaml"))
        path, _ = QFileDialog.getSaveFileName(self, "Save plan", suggestion, "Scan plan (*.yaml *.yml)")
        if path:
            self.save_plan(Path(path))

    def save_plan(self, path: Path) -> None:
        """Write the form's plan as YAML (off the Qt thread)."""
        plan = self._plan
        if plan is None:
            self.message.emit("error", "the plan has problems; fix them before saving it")
            return
        from acquisition.plan import save_plan

        self._in_thread(
            lambda: save_plan(plan, path),
            on_done=lambda _: self.message.emit("info", f"plan saved: {path}"),
            on_error=lambda e: self.message.emit("error", f"cannot save the plan to {path}: {e}"),
            name="cordscope-save-plan",
        )

    def _run(self, session: ScanSession, announcement: str) -> None:
        self._scan_generation += 1
        self._session = session
        self._last_result = None
        self._resumable = None
        bridge = _ScanBridge(self)
        bridge.state_changed.connect(self._on_state)
        bridge.progress.connect(self._on_progress)
        bridge.message.connect(self._on_scan_message)
        bridge.finished.connect(self._on_finished)
        bridge.maps_updated.connect(self._on_maps_updated)
        bridge.tile_stored.connect(self._on_tile_stored)
        bridge.attach(session)
        if self._bridge is not None:
            self._bridge.deleteLater()
        self._bridge = bridge
        plan = session.plan
        self._section_labels = {
            s.id: " · ".join(v for v in (s.id, s.animal, s.group, s.level) if v) for s in plan.sections
        }
        self.section_combo.clear()
        for s in plan.sections:
            self.section_combo.addItem(self._section_labels[s.id], s.id)
        self._fill_section_table({s.id: (0, 0, 0) for s in plan.sections})
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_label.setText("")
        self.live.clear()
        self._current_section = None
        self._set_state("preparing")
        self.message.emit("info", announcement)
        session.start()
        self._live_timer.start()

    # ------------------------------------------------------ scan signals

    def _on_state(self, state: str) -> None:
        if state in ("done", "failed"):
            return  # the end is shown by _on_finished, with how the scan ended
        self._set_state(state)

    def _on_progress(self, p: ScanProgress) -> None:
        self.progress_bar.setRange(0, max(p.tiles_total, 1))
        self.progress_bar.setValue(p.tiles_done + p.tiles_failed)
        failed = f" · {p.tiles_failed} failed" if p.tiles_failed else ""
        where = f"{p.current_section} · " if p.current_section else ""
        eta = f" · ETA {_clock(p.eta_s)}" if p.state in ("scanning", "paused") else ""
        elapsed = f" · elapsed {_clock(p.elapsed_s)}"
        self.progress_label.setText(
            f"{where}{p.tiles_done} of {p.tiles_total} tiles done{failed}{elapsed}{eta}"
        )
        self._fill_section_table({sid: (s.done, s.failed, s.total) for sid, s in p.sections.items()})
        if p.current_section and p.current_section != self._current_section:
            self._current_section = p.current_section
            if self.follow_check.isChecked():
                self._show_section(p.current_section)

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

    def section_progress(self) -> dict[str, tuple[str, str]]:
        """The per-section table as shown: section id → (done / total, failed)."""
        out = {}
        for i in range(self.section_table.rowCount()):
            cells = [self.section_table.item(i, j) for j in range(3)]
            if all(c is not None for c in cells):
                out[cells[0].text()] = (cells[1].text(), cells[2].text())  # type: ignore[union-attr]
        return out

    def _on_scan_message(self, level: str, text: str) -> None:
        if level == "info":
            # progress notes (focus map points): shown here; the controller also logs them
            if self._state in ("preparing", "focusing"):
                self.progress_label.setText(text)
            return
        self.message.emit(level, text)

    def _on_tile_stored(self, section_id: str, tile_index: int) -> None:
        self._live_dirty = True

    def _on_maps_updated(self, section_id: str) -> None:
        self._live_dirty = True

    def _on_finished(self, session_result: SessionResult) -> None:
        self._last_result = session_result
        result = session_result.scan
        self._live_timer.stop()
        self.progress_bar.setRange(0, max(result.tiles_total, 1))
        self.progress_bar.setValue(result.tiles_done + result.tiles_failed)
        summary = (
            f"scan {result.state}: {result.tiles_done} of {result.tiles_total} tiles done"
            + (f", {result.tiles_failed} failed" if result.tiles_failed else "")
            + f" in {_clock(result.elapsed_s)}"
        )
        self.progress_label.setText(summary[0].upper() + summary[1:])
        level = {"finished": "info", "aborted": "warning"}.get(result.state, "error")
        self.message.emit(
            level if result.state != "finished" or not result.tiles_failed else "warning", summary
        )
        if not result.complete and result.tiles_total and Path(result.path).is_file():
            # stopped early or with failed tiles: resuming acquires what is missing
            self._resumable = Path(result.path)
        if session_result.tables is not None:
            from analysis.scan_analysis import region_csv_path

            path = Path(result.path)
            self.message.emit("info", f"analysis written into {path.name} and {region_csv_path(path).name}")
        if result.tiles_done and Path(result.path).is_file():
            self._end_scan(result.state, Path(result.path))
        else:
            self._set_state(result.state)

    def _end_scan(self, state: str, path: Path) -> None:
        self._set_state(state)
        self._update_buttons()
        self._live_dirty = True
        self._refresh_live()
        if not self._output_edited or Path(self.output_edit.text()) == path:
            # the next scan gets a new file instead of "already exists"
            self.output_edit.setText(str(_free_name(path)))
            self._output_edited = False
        self.scan_finished.emit(str(path))

    # ------------------------------------------------------------ live view

    def _section_chosen(self, index: int) -> None:
        sid = self.section_combo.itemData(index)
        if sid and self._current_section and sid != self._current_section:
            self.follow_check.setChecked(False)
        self._live_dirty = True
        self._refresh_live()

    def _follow_toggled(self, on: bool) -> None:
        if on and self._current_section:
            self._show_section(self._current_section)

    def _show_section(self, section_id: str) -> None:
        i = self.section_combo.findData(section_id)
        if i >= 0 and i != self.section_combo.currentIndex():
            self.section_combo.setCurrentIndex(i)
            self.live.clear()
        self._live_dirty = True

    def shown_section(self) -> str | None:
        """The section the live view shows."""
        sid = self.section_combo.currentData()
        return str(sid) if sid is not None else None

    def _refresh_live(self) -> None:
        session, sid = self._session, self.shown_section()
        if session is None or sid is None or not self._live_dirty or self._live_job_running:
            return
        self._live_dirty = False
        self._live_job_running = True
        caption_head = self._section_labels.get(sid, sid)
        plan = session.plan
        names = (plan.anatomy_channel.preset, plan.tracer_channel.preset)
        generation = self._scan_generation
        self._in_thread(
            lambda: _live_picture(session, sid, caption_head, names),
            on_done=lambda picture: self._live_ready(
                picture if generation == self._scan_generation else None
            ),
            on_error=self._live_failed,
            name="cordscope-live-view",
        )

    def _when_live_idle(self, action: Any) -> None:
        if self._live_job_running:
            self._after_live.append(action)
        else:
            action()

    def _live_job_done(self) -> None:
        self._live_job_running = False
        pending, self._after_live = self._after_live, []
        for action in pending:
            action()

    def _live_ready(self, picture: SectionPicture | None) -> None:
        self._live_job_done()
        if picture is not None and picture.section_id == self.shown_section():
            self.live.show_picture(picture)
        if self._live_dirty and not self._live_timer.isActive():
            self._refresh_live()  # a change arrived while drawing and no tick will come (scan over)

    def _live_failed(self, error: BaseException) -> None:
        self._live_job_done()
        logger.error("live view: %s", error, exc_info=error)
        self.message.emit("warning", f"live view could not be drawn: {error}")


def _live_picture(
    session: ScanSession, section_id: str, caption_head: str, channel_names: tuple[str, str]
) -> SectionPicture | None:
    """Snapshot and render one section (runs off the Qt thread)."""
    try:
        snap: LiveSnapshot | None = session.snapshot(section_id)
    except ValueError:  # e.g. a finalized section with no tissue imaged: nothing to show
        return None
    if snap is None:
        return None
    regions = snap.regions
    caption = f"{caption_head} — {snap.n_tiles_analysed} of {snap.n_tiles} tiles analysed"
    if regions is None:
        caption += " (regions appear once enough tissue is imaged)"
    return render_section(
        n_tiles_analysed=snap.n_tiles_analysed,
        n_tiles=snap.n_tiles,
        section_id=section_id,
        anatomy=snap.anatomy_mosaic,
        tracer=snap.tracer_mosaic,
        mosaic_origin_um=tuple(snap.mosaic_origin_um),
        mosaic_pixel_um=snap.mosaic_pixel_um,
        pct_axonal_area=snap.maps.pct_axonal_area,
        map_origin_um=tuple(snap.maps.origin_um),
        map_bin_um=snap.maps.bin_um,
        masks=None if regions is None else regions.masks,
        mask_origin_um=None if regions is None else regions.origin_um,
        mask_pixel_um=None if regions is None else regions.pixel_size_um,
        table=snap.table,
        caption=caption,
        anatomy_name=channel_names[0],
        tracer_name=channel_names[1],
    )
