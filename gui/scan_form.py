"""The scan tab's form: what a plan file holds, checked at every change.

:class:`ScanForm` turns its fields and the slide panel's sections into a
:class:`~acquisition.plan.ScanPlan` (``plan_from_dict``), shows each
validation problem next to the field it concerns, and checks a plan that
validates against the microscope and the disk off the Qt thread
(:func:`acquisition.plan.validate_plan` through :func:`gui.workers.run_for_widget`).
It knows nothing of running a scan: the scan panel reads :meth:`ScanForm.ready_plan`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path
from typing import Any

from PyQt6.QtCore import QTimer, pyqtSignal
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from acquisition.hardware import channel_group, config_presets, objective_group
from acquisition.plan import (
    DEFAULT_HARDWARE_CONFIG,
    PlanError,
    PlanProblem,
    ScanPlan,
    plan_from_dict,
    validate_plan,
)

from .workers import run_for_widget

__all__ = ["DEFAULT_CHANNELS", "ROLES", "ScanForm", "default_output_path", "free_name"]

#: Quiet time after the last edit before the plan is validated again (ms).
VALIDATE_DELAY_MS = 250
#: Channel presets preselected with their role and exposure (the demo's fluorophores).
DEFAULT_CHANNELS: dict[str, tuple[str, float]] = {"DAPI": ("anatomy", 20.0), "tdTomato": ("tracer", 50.0)}
ROLES = ("tracer", "anatomy", "other")
_ERROR_STYLE = "color: #d32f2f;"


def default_output_path(name: str = "scan", folder: Path | None = None) -> Path:
    """A new scan file name: ``~/CordScope-scans/<name>-<YYYYmmdd-HHMMSS>.h5`` (or in ``folder``)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "scan"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return (folder or Path.home() / "CordScope-scans") / f"{stem}-{stamp}.h5"


def free_name(path: Path) -> Path:
    """Return ``path`` if no file has that name, else ``<stem>-2<suffix>``, ``-3``, and so on."""
    if not path.exists():
        return path
    stem = re.sub(r"-\d+$", "", path.stem)
    n = 2
    while (candidate := path.with_name(f"{stem}-{n}{path.suffix}")).exists():
        n += 1
    return candidate


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


@dataclasses.dataclass
class _ChannelRow:
    preset: str
    use: QCheckBox
    exposure_ms: QDoubleSpinBox
    role: QComboBox
    error: QLabel


class ScanForm(QGroupBox):
    """The plan settings of the scan tab, validated at every change.

    Signals
    -------
    checked()
        The form was checked again (after an edit, once the microscope and disk checks are done):
        read :meth:`ready_plan`.
    """

    checked = pyqtSignal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Scan plan", parent)
        self._core: Any = None
        self._sections: list[dict[str, Any]] = []
        self._channel_rows: list[_ChannelRow] = []
        self._plan: ScanPlan | None = None  # the form's plan, when it validated
        self._hardware_ok = False
        self._validation_generation = 0
        self._output_edited = False
        self._analysis_extra: dict[str, Any] = {}  # analysis settings of a loaded plan, kept as they were
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
        self.adaptive_check = QCheckBox("Image again at a higher magnification where the tract has signal")
        self.adaptive_objective_combo = QComboBox()
        self.adaptive_objective_combo.setToolTip("Objective of the second pass (e.g. 20x)")
        self.adaptive_check.setToolTip(
            "After the scan, a second pass images the rubrospinal territory's tiles whose live "
            "% axonal area map shows signal, with the objective chosen here; the analysis uses "
            "those images where it has them"
        )
        self.adaptive_error = _error_label()
        self._adaptive_extra: dict[str, Any] = {}  # a loaded plan's other adaptive settings
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
        adaptive_row = QWidget()
        al = QHBoxLayout(adaptive_row)
        al.setContentsMargins(0, 0, 0, 0)
        al.addWidget(self.adaptive_check, 1)
        al.addWidget(self.adaptive_objective_combo)
        form.addRow("Second pass", self._stack(adaptive_row, self.adaptive_error))
        out_row = QWidget()
        ol = QHBoxLayout(out_row)
        ol.setContentsMargins(0, 0, 0, 0)
        ol.addWidget(self.output_edit, 1)
        ol.addWidget(self.output_browse)
        form.addRow("Output file", self._stack(out_row, self.overwrite_check, self.output_error))
        form.addRow("Sections", self._stack(self.sections_label, self.sections_error))
        settings_layout = QVBoxLayout(self)
        settings_layout.addLayout(form)
        settings_layout.addWidget(self.summary_label)
        settings_layout.addWidget(self.general_error)

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
        self.adaptive_check.toggled.connect(self._changed)
        self.adaptive_check.toggled.connect(self.adaptive_objective_combo.setEnabled)
        self.adaptive_objective_combo.currentIndexChanged.connect(self._changed)
        self.adaptive_objective_combo.setEnabled(False)
        self.focus_combo.currentIndexChanged.connect(self._focus_strategy_changed)
        self.output_browse.clicked.connect(self._browse_output)
        self._focus_strategy_changed()
        self._validate_timer = QTimer(self)
        self._validate_timer.setSingleShot(True)
        self._validate_timer.setInterval(VALIDATE_DELAY_MS)
        self._validate_timer.timeout.connect(self.validate)
        self.validate()

    @staticmethod
    def _stack(*widgets: QWidget) -> QWidget:
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 0)
        v.setSpacing(2)
        for w in widgets:
            v.addWidget(w)
        return box

    # ========================================================== public API

    def set_core(self, core: Any) -> None:
        """Offer this core's objectives and channels and check the plan against it (None: no microscope)."""
        self._core = core
        self._fill_hardware_choices()
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

    def ready_plan(self) -> ScanPlan | None:
        """The form's plan if it passed every check (settings, microscope, disk), else None."""
        return self._plan if self._hardware_ok else None

    def checked_plan(self) -> ScanPlan | None:
        """The form's plan if its settings validated (the microscope and disk checks may be pending)."""
        return self._plan

    @property
    def overwrite(self) -> bool:
        """Whether an existing output file may be replaced."""
        return self.overwrite_check.isChecked()

    def next_output_after(self, path: Path) -> None:
        """A scan wrote ``path``: propose a new file name unless the user chose another one."""
        if not self._output_edited or Path(self.output_edit.text()) == path:
            self.output_edit.setText(str(free_name(path)))
            self._output_edited = False

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
        self.adaptive_check.setChecked(plan.adaptive is not None)
        if plan.adaptive is not None:
            self._adaptive_extra = plan.adaptive.model_dump(mode="json", exclude={"objective"})
            if (i := self.adaptive_objective_combo.findText(plan.adaptive.objective)) >= 0:
                self.adaptive_objective_combo.setCurrentIndex(i)
        self.output_edit.setText(str(plan.output))
        self.set_sections([s.model_dump(mode="json") for s in plan.sections])

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
        current_pass = self.adaptive_objective_combo.currentText()
        self.adaptive_objective_combo.blockSignals(True)
        self.adaptive_objective_combo.clear()
        self.adaptive_objective_combo.addItems(
            [self.objective_combo.itemText(i) for i in range(self.objective_combo.count())]
        )
        wanted_pass = current_pass or "20x"
        if (i := self.adaptive_objective_combo.findText(wanted_pass)) >= 0:
            self.adaptive_objective_combo.setCurrentIndex(i)
        self.adaptive_objective_combo.blockSignals(False)
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
            return ""
        return channel_group(core)

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
        if self.adaptive_check.isChecked():
            data["adaptive"] = {
                **self._adaptive_extra,
                "objective": self.adaptive_objective_combo.currentText(),
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
        self.checked.emit()
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
        analysis, adaptive, output, sections, general, or a channel preset (e.g. ``"tdTomato"``).
        """
        labels = {
            "name": self.name_error,
            "objective": self.objective_error,
            "channels": self.channels_error,
            "overlap": self.overlap_error,
            "focus": self.focus_error,
            "retries": self.retries_error,
            "analysis": self.analysis_error,
            "adaptive": self.adaptive_error,
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
            "adaptive": self.adaptive_error,
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
            self.checked.emit()
            return
        self._plan = plan
        self.summary_label.setText("checking the plan against the microscope and the disk…")
        core, overwrite = self._core, self.overwrite_check.isChecked()
        run_for_widget(
            self,
            lambda: validate_plan(plan, core, overwrite=overwrite),
            on_done=lambda summary: self._hardware_checked(generation, summary, None),
            on_error=lambda e: self._hardware_checked(generation, None, e),
            name="cordscope-validate-plan",
        )
        self.checked.emit()

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
        self.checked.emit()
