"""The "Slide" tab: the overview image, the section outlines on it, and the section table.

The panel wires three pieces, each in its own module: the sections' model
and table (:mod:`gui.section_table`), the overview scene with the editable
outlines (:mod:`gui.slide_scene`), and the outline tools they share with the
region editor (:mod:`gui.outline_items`). Dragging a vertex writes the new
position into the model, editing a cell changes the model, and both views
follow the model's signals. Scene units are stage µm (x right, y down, as
the overview's rows and columns), so an outline's vertices are its
``polygon_um``.

Slow work (acquiring, loading and saving the overview, finding sections)
runs off the Qt thread (:mod:`gui.workers`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PyQt6.QtCore import QItemSelection, QItemSelectionModel, QModelIndex, QRectF, Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QPixmap
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from acquisition.hardware import CordScopeCore
from acquisition.overview import (
    Overview,
    OverviewCancelledError,
    acquire_overview,
    load_overview,
    save_overview,
)
from analysis.sections import FoundSection, find_sections

from .overview_box import OverviewBox
from .section_table import (
    COLUMNS,
    ORIENTATIONS,
    SIDES,
    ChoiceDelegate,
    Section,
    SectionTableModel,
    column_index,
    merge_found_sections,
)
from .slide_scene import SectionItem, ShownOverview, SlideView, display_image, prepare_overview
from .workers import Job

__all__ = [
    "COLUMNS",
    "Section",
    "SectionItem",
    "SectionTableModel",
    "SlidePanel",
    "SlideView",
    "display_image",
]

logger = logging.getLogger(__name__)


class SlidePanel(QWidget):
    """The "Slide" tab: acquire or load an overview, find and edit the sections.

    Signals
    -------
    sections_changed()
        The sections changed (added, deleted, outline moved, a cell edited);
        read them with :meth:`sections`. Coalesced while a vertex is dragged.
    message(str, str)
        ``(level, text)`` for the window's log and status bar.
    overview_changed()
        A new overview is shown.
    """

    sections_changed = pyqtSignal()
    message = pyqtSignal(str, str)
    overview_changed = pyqtSignal()

    #: sections_changed is sent this long after the last change (ms)
    CHANGE_DELAY_MS = 150

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.core: CordScopeCore | None = None
        self._overview: Overview | None = None
        self._pixmap_item: QGraphicsPixmapItem | None = None
        self._items: list[SectionItem] = []
        self._job: Job | None = None
        self._syncing_selection = False

        self.model = SectionTableModel(self)
        self.scene = QGraphicsScene(self)
        self.view = SlideView(self.scene)
        self.table = QTableView()
        self._build_table()
        self._build_controls()

        self._change_timer = QTimer(self)
        self._change_timer.setSingleShot(True)
        self._change_timer.setInterval(self.CHANGE_DELAY_MS)
        self._change_timer.timeout.connect(self.sections_changed)

        self.model.modelReset.connect(self._rebuild_items)
        self.model.rowsInserted.connect(self._rebuild_items)
        self.model.rowsRemoved.connect(self._rebuild_items)
        self.model.dataChanged.connect(self._on_data_changed)
        self.model.polygon_changed.connect(self._on_polygon_changed)
        self.model.problem.connect(lambda text: self.message.emit("warning", text))
        for signal in (self.model.modelReset, self.model.rowsInserted, self.model.rowsRemoved):
            signal.connect(self._schedule_changed)
        self.model.dataChanged.connect(self._schedule_changed)
        self.scene.selectionChanged.connect(self._on_scene_selection)
        self.view.polygon_drawn.connect(self._on_polygon_drawn)
        self.view.drawing_changed.connect(self._on_drawing_changed)
        self.view.delete_pressed.connect(self.delete_selected)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.view)
        splitter.addWidget(self.table)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([600, 220])
        self.table.setMinimumHeight(120)
        layout = QHBoxLayout(self)
        layout.addWidget(splitter, 1)
        layout.addWidget(self._side)
        self._update_buttons()

    # ----------------------------------------------------------------- layout

    def _build_table(self) -> None:
        t = self.table
        t.setModel(self.model)
        t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        t.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        t.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked
            | QAbstractItemView.EditTrigger.EditKeyPressed
            | QAbstractItemView.EditTrigger.AnyKeyPressed
            | QAbstractItemView.EditTrigger.SelectedClicked
        )
        t.setAlternatingRowColors(True)
        t.setItemDelegateForColumn(column_index("orientation"), ChoiceDelegate(ORIENTATIONS, t))
        t.setItemDelegateForColumn(column_index("injection_side"), ChoiceDelegate(SIDES, t))
        header, rows = t.horizontalHeader(), t.verticalHeader()
        assert header is not None and rows is not None
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        rows.setDefaultSectionSize(24)
        sel = t.selectionModel()
        assert sel is not None
        sel.selectionChanged.connect(self._on_table_selection)

    def _build_controls(self) -> None:
        self.overview_box = OverviewBox()
        box = self.overview_box
        box.acquire_button.clicked.connect(self.acquire_overview)
        box.cancel_button.clicked.connect(self.cancel)
        box.load_button.clicked.connect(self._ask_load_overview)
        box.save_button.clicked.connect(self._ask_save_overview)

        # -- sections
        self.find_button = QPushButton("Find sections")
        self.find_button.setToolTip("Outline the sections in the overview (replaces those found before)")
        self.find_button.clicked.connect(self.find_sections)
        self.add_button = QPushButton("Add section")
        self.add_button.setCheckable(True)
        self.add_button.setToolTip(
            "Click the outline's corners; double-click or Enter closes it, Esc cancels"
        )
        self.add_button.toggled.connect(self._on_add_toggled)
        self.delete_button = QPushButton("Delete section")
        self.delete_button.setToolTip("Delete the selected sections (Delete key)")
        self.delete_button.clicked.connect(self.delete_selected)
        self.fit_button = QPushButton("Fit view")
        self.fit_button.clicked.connect(self.fit_view)
        self.sections_info = QLabel()
        hint = QLabel(
            "Select an outline (or a table row) to drag its vertices. "
            "Double-click a cell to edit it. Wheel zooms, drag pans."
        )
        hint.setWordWrap(True)
        hint.setStyleSheet("color: #606060")
        sec_box = QGroupBox("Sections")
        grid = QGridLayout(sec_box)
        grid.addWidget(self.find_button, 0, 0, 1, 2)
        grid.addWidget(self.add_button, 1, 0)
        grid.addWidget(self.delete_button, 1, 1)
        grid.addWidget(self.fit_button, 2, 0, 1, 2)
        grid.addWidget(self.sections_info, 3, 0, 1, 2)
        grid.addWidget(hint, 4, 0, 1, 2)

        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(self.overview_box)
        side_layout.addWidget(sec_box)
        side_layout.addStretch(1)
        side.setFixedWidth(300)
        self._side = side

    # ---------------------------------------------------------------- public

    def set_core(self, core: CordScopeCore | None) -> None:
        """Use ``core`` to acquire overviews (None: none can be acquired)."""
        if self._job is not None and self._job.is_running() and core is not self.core:
            self._job.cancel()
        self.core = core
        self.overview_box.set_core(core)
        self._update_buttons()

    def sections(self) -> list[dict[str, Any]]:
        """The sections as dicts valid for ``acquisition.plan.SectionPlan``, in table order."""
        return [s.to_plan_dict() for s in self.model.sections()]

    def set_sections(self, sections: list[dict[str, Any]]) -> None:
        """Show these sections (e.g. from a plan), replacing all; dicts as ``SectionPlan`` fields."""
        known = {"id", "polygon_um", "animal", "group", "level", "orientation", "injection_side", "source"}
        rows = []
        for d in sections:
            rows.append(
                Section(
                    id=str(d["id"]),
                    polygon_um=[(float(x), float(y)) for x, y in d["polygon_um"]],
                    animal=str(d.get("animal") or ""),
                    group=str(d.get("group") or ""),
                    level=str(d.get("level") or ""),
                    orientation=str(d.get("orientation") or "coronal"),
                    injection_side=d.get("injection_side") or None,
                    source=str(d.get("source") or "plan"),
                    extra={k: v for k, v in d.items() if k not in known},
                )
            )
        self.model.set_sections(rows)
        if self._overview is None:
            self.fit_view()

    def overview(self) -> Overview | None:
        """The overview shown, if any."""
        return self._overview

    def set_overview(self, overview: Overview | None) -> None:
        """Show an overview (None: none) under the outlines."""
        self._show(prepare_overview(overview) if overview is not None else None)

    # ---------------------------------------------------------- overview work

    def region_um(self) -> tuple[float, float, float, float]:
        """The overview region from the settings (x0, y0, x1, y1), stage µm."""
        return self.overview_box.region_um()

    def set_region_um(self, region_um: Sequence[float]) -> None:
        """Set the overview region (x0, y0, x1, y1), stage µm."""
        self.overview_box.set_region_um(region_um)

    def busy(self) -> bool:
        """Whether an overview, a file or a section search is in progress."""
        return self._job is not None

    def acquire_overview(self) -> Job | None:
        """Acquire an overview of the region off the Qt thread (None if it cannot start now)."""
        core = self.core
        if core is None:
            self.message.emit("warning", "no hardware loaded: load a configuration first")
            return None
        if self._job is not None:
            return None
        if core.mda.is_running():
            self.message.emit("warning", "a scan is running: the overview can be acquired after it")
            return None
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
            self.message.emit("info", "live view stopped for the overview")
        kwargs = self.overview_box.acquisition_settings(core)
        job = Job("overview")
        job.progress.connect(self._on_progress)
        self.overview_box.show_busy()

        def work() -> ShownOverview:
            ov = acquire_overview(core, progress=job.report_progress, should_stop=job.is_cancelled, **kwargs)
            return prepare_overview(ov)

        x0, y0, x1, y1 = kwargs["region_um"]
        self.message.emit(
            "info",
            f"acquiring the overview of x {x0 / 1000:g}–{x1 / 1000:g} mm, y {y0 / 1000:g}–{y1 / 1000:g} mm "
            f"at {kwargs['objective']} in {kwargs['channel']}",
        )
        return self._start(job, work, self._on_overview_acquired, what="acquire the overview")

    def _on_overview_acquired(self, shown: ShownOverview) -> None:
        self._show(shown)
        h, w = shown.overview.shape
        self.message.emit(
            "info", f"overview acquired: {w} × {h} px at {shown.overview.pixel_size_um:.2f} µm/px"
        )

    def _on_progress(self, done: int, total: int) -> None:
        self.overview_box.show_progress(done, total)

    def cancel(self) -> None:
        """Stop the running overview after the current tile."""
        if self._job is not None:
            self._job.cancel()
            self.overview_box.cancel_button.setEnabled(False)

    @property
    def job(self) -> Job | None:
        """The work in progress (overview, file, section search), if any."""
        return self._job

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Cancel the running work and wait for its thread (before the core is unloaded); True if it ended."""
        job = self._job
        if job is None:
            return True
        job.cancel()
        return job.wait(timeout_s)

    def load_overview_file(self, path: Path) -> Job | None:
        """Read an overview TIFF off the Qt thread and show it."""
        if self._job is not None:
            return None
        path = Path(path)

        def done(shown: ShownOverview) -> None:
            self._show(shown)
            self.message.emit("info", f"overview loaded from {path}")

        return self._start(
            Job("load-overview"), lambda: prepare_overview(load_overview(path)), done, what=f"load {path}"
        )

    def save_overview_file(self, path: Path) -> Job | None:
        """Write the overview as a TIFF off the Qt thread."""
        overview = self._overview
        if overview is None:
            self.message.emit("warning", "no overview to save")
            return None
        if self._job is not None:
            return None
        path = Path(path)
        return self._start(
            Job("save-overview"),
            lambda: save_overview(path, overview),
            lambda p: self.message.emit("info", f"overview saved to {p}"),
            what=f"save the overview to {path}",
        )

    def find_sections(self) -> Job | None:
        """Find the sections in the overview off the Qt thread; replaces those found before."""
        overview = self._overview
        if overview is None:
            self.message.emit("warning", "no overview: acquire or load one first")
            return None
        if self._job is not None:
            return None

        def work() -> list[FoundSection]:
            return find_sections(
                overview.image, origin_um=overview.origin_um, pixel_size_um=overview.pixel_size_um
            )

        return self._start(Job("find-sections"), work, self._on_found, what="find the sections")

    def _start(self, job: Job, work: Callable[[], Any], on_done: Callable[[Any], None], *, what: str) -> Job:
        self._job = job
        job.done.connect(on_done)
        job.failed.connect(lambda e: self._on_job_failed(e, what))
        job.finished.connect(self._on_job_finished)
        self._update_buttons()
        return job.start(work)

    def _on_job_failed(self, error: BaseException, what: str) -> None:
        if isinstance(error, OverviewCancelledError):
            self.message.emit("info", f"{error}")
        else:
            logger.debug("slide panel: %s failed", what, exc_info=error)
            self.message.emit("error", f"cannot {what}: {error}")

    def _on_job_finished(self) -> None:
        self._job = None
        self.overview_box.show_idle()
        self._update_buttons()

    def _show(self, shown: ShownOverview | None) -> None:
        if self._pixmap_item is not None:
            self.scene.removeItem(self._pixmap_item)
            self._pixmap_item = None
        self._overview = shown.overview if shown is not None else None
        if shown is not None:
            ov = shown.overview
            item = QGraphicsPixmapItem(QPixmap.fromImage(shown.image))
            item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
            item.setScale(ov.pixel_size_um)
            item.setPos(ov.origin_um[0], ov.origin_um[1])
            item.setZValue(0)
            self.scene.addItem(item)
            self._pixmap_item = item
        self.overview_box.show_overview(self._overview)
        self.fit_view()
        self._update_buttons()
        self.overview_changed.emit()

    def fit_view(self) -> None:
        """Zoom to the overview and the outlines."""
        rect = QRectF()
        if self._pixmap_item is not None:
            rect = self._pixmap_item.sceneBoundingRect()
        for item in self._items:
            rect = rect.united(item.sceneBoundingRect())
        if rect.isValid():
            margin = 0.02 * max(rect.width(), rect.height())
            rect = rect.adjusted(-margin, -margin, margin, margin)
            self.scene.setSceneRect(rect.united(self.scene.itemsBoundingRect()))
            self.view.fit_rect(rect)

    # -------------------------------------------------------- found sections

    def _on_found(self, found: list[FoundSection]) -> None:
        merged, skipped = merge_found_sections(self.model.sections(), found)
        self.model.set_sections(merged)
        text = f"found {len(found)} sections"
        if skipped:
            text += f" ({skipped} already outlined by hand, kept as they were)"
        self.message.emit(
            "info" if found else "warning", text if found else "no sections found in the overview"
        )
        self.fit_view()

    # ------------------------------------------------------------ hand edits

    def _on_add_toggled(self, on: bool) -> None:
        if on and not self.view.drawing:
            self.view.start_drawing()
            self.message.emit("info", "click the corners of the new outline; double-click or Enter closes it")
        elif not on and self.view.drawing:
            self.view.cancel_drawing()

    def _on_drawing_changed(self, drawing: bool) -> None:
        if self.add_button.isChecked() != drawing:
            self.add_button.setChecked(drawing)

    def _on_polygon_drawn(self, points: list[tuple[float, float]]) -> None:
        section = Section(id=self.model.next_id(), polygon_um=points, source="drawn")
        row = self.model.add(section)
        self.select_rows([row])
        self.message.emit("info", f"section {section.id} added")

    def delete_selected(self) -> None:
        """Delete the sections selected in the table or in the view."""
        rows = self.selected_rows()
        if not rows:
            self.message.emit("warning", "select a section to delete")
            return
        ids = [self.model.section(r).id for r in rows]
        self.model.remove_rows(rows)
        self.message.emit("info", f"deleted {', '.join(ids)}")

    def selected_rows(self) -> list[int]:
        """Rows selected (table and view agree)."""
        sel = self.table.selectionModel()
        return sorted({i.row() for i in sel.selectedRows()}) if sel is not None else []

    def select_rows(self, rows: Sequence[int]) -> None:
        """Select sections by row (table and outlines)."""
        sel = self.table.selectionModel()
        if sel is None:
            return
        selection = QItemSelection()
        last = self.model.columnCount() - 1
        for r in rows:
            selection.select(self.model.index(r, 0), self.model.index(r, last))
        sel.select(selection, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        if rows:
            self.table.scrollTo(self.model.index(rows[0], 0))

    def item_for(self, section_id: str) -> SectionItem | None:
        """The outline item of a section (for tests and tools)."""
        return next((i for i in self._items if i.section_id == section_id), None)

    def _outline_edited(self, item: SectionItem) -> None:
        row = self.model.row_of(item.section_id)
        if row >= 0:
            self.model.set_polygon(row, item.vertices_um())

    # ----------------------------------------------------------- model → view

    def _rebuild_items(self, *_: Any) -> None:
        selected = {self.model.section(r).id for r in self.selected_rows() if r < self.model.rowCount()}
        for item in self._items:
            self.scene.removeItem(item)
        self._items = [SectionItem(s, self._outline_edited) for s in self.model.sections()]
        self._syncing_selection = True
        try:
            for item in self._items:
                self.scene.addItem(item)
                if item.section_id in selected:
                    item.setSelected(True)
        finally:
            self._syncing_selection = False
        self._update_buttons()

    def _on_data_changed(self, top_left: QModelIndex, bottom_right: QModelIndex, *_: Any) -> None:
        for row in range(top_left.row(), bottom_right.row() + 1):
            if 0 <= row < len(self._items):
                self._items[row].set_section(self.model.section(row))

    def _on_polygon_changed(self, row: int) -> None:
        if 0 <= row < len(self._items):
            self._items[row].set_section(self.model.section(row))

    def _schedule_changed(self, *_: Any) -> None:
        self._change_timer.start()
        self._update_buttons()

    def _on_table_selection(self, *_: Any) -> None:
        if self._syncing_selection:
            return
        rows = set(self.selected_rows())
        self._syncing_selection = True
        try:
            for i, item in enumerate(self._items):
                item.setSelected(i in rows)
        finally:
            self._syncing_selection = False
        self._update_buttons()

    def _on_scene_selection(self) -> None:
        if self._syncing_selection:
            return
        rows = [i for i, item in enumerate(self._items) if item.isSelected()]
        self._syncing_selection = True
        try:
            self.select_rows(rows)
        finally:
            self._syncing_selection = False
        self._update_buttons()

    def _update_buttons(self) -> None:
        if not hasattr(self, "_change_timer"):
            return
        busy = self._job is not None
        acquiring = busy and self._job is not None and self._job.name == "overview"
        self.overview_box.set_states(
            can_acquire=self.core is not None and not busy,
            acquiring=acquiring,
            busy=busy,
            has_overview=self._overview is not None,
        )
        self.find_button.setEnabled(not busy and self._overview is not None)
        self.delete_button.setEnabled(bool(self.selected_rows()))
        n = self.model.rowCount()
        self.sections_info.setText(f"{n} section{'s' if n != 1 else ''}")

    # ------------------------------------------------------------- dialogs

    def _ask_load_overview(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load overview", "", "Overview TIFF (*.tif *.tiff)")
        if path:
            self.load_overview_file(Path(path))

    def _ask_save_overview(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save overview", "overview.tif", "Overview TIFF (*.tif *.tiff)"
        )
        if path:
            self.save_overview_file(Path(path))
