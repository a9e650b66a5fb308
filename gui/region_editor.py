"""Correct a saved section's regions by hand: drag vertices, draw an outline, paint, reset, re-analyse.

:class:`RegionEditor` is a :class:`~gui.live_view.SectionDisplay` (mosaic,
heatmap, outlines, region table) with editing tools. Select a region in the
table: its outline appears with a handle on every vertex (the same
:class:`~gui.outline_items.EditablePolygonItem` the slide scene drags), and

* dragging a vertex changes the region (kind ``edited``);
* *Draw outline* replaces it by a polygon clicked corner by corner (``drawn``);
* *Brush* paints cells into it (or erases them) with a round brush, stroke by
  stroke without gaps (``edited``);
* *Reset to automatic* brings back the automatic outline.

Changes are kept per section, marked "(not saved)" in the table's Kind
column, until **Re-analyse** recomputes the table and maps from the section's
stored per-cell sums and writes the regions into the file with who, when and
what (:func:`gui.region_editing.write_section_edits`, off the Qt thread).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from PyQt6.QtCore import QObject, QPointF, pyqtSignal
from PyQt6.QtGui import QColor, QFont, QPixmap
from PyQt6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QGraphicsPixmapItem,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from analysis.region_edits import RegionEdit, RegionEditError, RegionReset

from .live_view import SectionDisplay, qimage
from .outline_items import EditablePolygonItem, cosmetic_pen
from .region_editing import (
    EditableSection,
    PendingEdits,
    SectionWrite,
    brush_cells,
    current_mask,
    current_outline,
    dragged_mask,
    geometry_rings,
    rings_geometry,
    write_section_edits,
)
from .results_io import LoadedScan
from .section_render import outline_color, region_label
from .workers import Job, run_for_widget

__all__ = ["RegionEditor", "RegionOutlineItem", "region_files"]

logger = logging.getLogger(__name__)

#: Why the tools are off before a saved section is given.
NOT_EDITABLE = "Regions can be corrected once the section's analysis is saved in its file."
#: Default brush radius (µm).
BRUSH_RADIUS_UM = 15.0
#: Opacity of the brush's working mask over the mosaic (0-255).
BRUSH_ALPHA = 120


class RegionFiles(QObject):
    """Tells every editor and panel of the window that regions of a scan file were written.

    Signals
    -------
    written(str, object, object)
        The file's path, the ids of the sections written (list of str), and who wrote them.
    """

    written = pyqtSignal(str, object, object)


_REGION_FILES: RegionFiles | None = None


def region_files() -> RegionFiles:
    """The window's notifier of written region files (made on first use, on the Qt thread)."""
    global _REGION_FILES
    if _REGION_FILES is None:
        _REGION_FILES = RegionFiles()
    return _REGION_FILES


class RegionOutlineItem(EditablePolygonItem):
    """One ring of the outline being edited (an exterior or a hole of one of the region's polygons)."""

    def __init__(
        self, editor: RegionEditor, region: str, polygon: int, ring: int, points: Sequence[Any]
    ) -> None:
        super().__init__(points)
        self._editor = editor
        self.region = region
        self.polygon_index = polygon
        self.ring_index = ring
        self.setPen(cosmetic_pen(QColor(outline_color(region)), 2.2))
        self.setZValue(4)

    def outline_edited(self, index: int) -> None:
        """A vertex was dragged: the region's outline is now this one."""
        self._editor._rings_edited(self.region)

    def drag_finished(self) -> None:
        """The mouse let go of a vertex: the region's change is worked out now."""
        self._editor._flush_rings()


class RegionEditor(SectionDisplay):
    """A section display whose regions can be corrected and re-analysed (see the module docstring).

    Signals
    -------
    message(level, text)
        For the window's log.
    regions_written(object)
        The :class:`~gui.results_io.LoadedScan` read back after this editor wrote a section.
    """

    message = pyqtSignal(str, str)
    regions_written = pyqtSignal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._scan: LoadedScan | None = None
        self._editable: EditableSection | None = None
        self._reason = NOT_EDITABLE
        self._pending = PendingEdits()
        self._items: list[RegionOutlineItem] = []
        self._region: str | None = None
        #: the outline shown for dragging and, for a cell mask, the mask it was made from
        self._shown_outline: dict[str, Any] | None = None
        self._shown_mask: np.ndarray | None = None
        self._rings_dirty = False
        self._brush_mask: np.ndarray | None = None
        self._job: Job | None = None

        self.draw_button = QPushButton("Draw outline")
        self.draw_button.setCheckable(True)
        self.draw_button.setToolTip(
            "Replace the selected region by a new outline: click its corners, double-click or Enter closes "
            "it, Esc cancels"
        )
        self.brush_button = QPushButton("Brush")
        self.brush_button.setCheckable(True)
        self.brush_button.setToolTip("Paint the selected region with a round brush (Esc stops)")
        self.brush_mode = QComboBox()
        self.brush_mode.addItems(["add", "erase"])
        self.brush_mode.setToolTip("add: paint cells into the region; erase: take them out")
        self.brush_radius = QDoubleSpinBox()
        self.brush_radius.setRange(1.0, 1000.0)
        self.brush_radius.setDecimals(0)
        self.brush_radius.setSuffix(" µm")
        self.brush_radius.setValue(BRUSH_RADIUS_UM)
        self.brush_radius.setToolTip("Brush radius")
        self.reset_button = QPushButton("Reset to automatic")
        self.reset_button.setToolTip("Bring back the outline CordScope found")
        self.discard_button = QPushButton("Discard changes")
        self.discard_button.setToolTip("Forget this section's changes that are not saved")
        self.reanalyse_button = QPushButton("Re-analyse")
        self.reanalyse_button.setToolTip(
            "Recompute the table and maps from the stored per-cell sums (no tile is read again) and save "
            "the regions in the file, with who and when"
        )
        bold = QFont(self.reanalyse_button.font())
        bold.setBold(True)
        self.reanalyse_button.setFont(bold)
        self.edit_hint = QLabel(self._reason)
        self.edit_hint.setWordWrap(True)
        self.edit_hint.setStyleSheet("color: #606060")

        tools = QHBoxLayout()
        tools.setContentsMargins(0, 0, 0, 0)
        for w in (self.draw_button, self.brush_button, self.brush_mode, self.brush_radius, self.reset_button):
            tools.addWidget(w)
        tools.addStretch(1)
        tools.addWidget(self.discard_button)
        tools.addWidget(self.reanalyse_button)
        box = QWidget()
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addLayout(tools)
        column.addWidget(self.edit_hint)
        self.tools = box
        self.top_layout.insertWidget(1, box)

        self._brush_item = QGraphicsPixmapItem()
        self._brush_item.setZValue(2.5)
        scene = self.view.scene()
        assert scene is not None
        scene.addItem(self._brush_item)

        self.region_selected.connect(self._on_region_chosen)
        self.draw_button.toggled.connect(self._on_draw_toggled)
        self.brush_button.toggled.connect(self._on_brush_toggled)
        self.brush_radius.valueChanged.connect(lambda r: self.view.set_brush_radius_um(r))
        self.reset_button.clicked.connect(self.reset_selected)
        self.discard_button.clicked.connect(self.discard_changes)
        self.reanalyse_button.clicked.connect(self.reanalyse)
        self.view.polygon_drawn.connect(self._on_polygon_drawn)
        self.view.drawing_changed.connect(self._on_drawing_changed)
        self.view.stroke_moved.connect(self._on_stroke)
        self.view.stroke_finished.connect(self._on_stroke_finished)
        self._update_tools()

    # ============================================================ public API

    def set_editing(
        self, scan: LoadedScan | None, editable: EditableSection | None, reason: str = ""
    ) -> None:
        """Edit this section of ``scan`` (None: editing off, ``reason`` says why)."""
        self._flush_rings()
        self._stop_tools()
        self._scan, self._editable = scan, editable
        if editable is None:
            self._reason = reason or NOT_EDITABLE
        self._brush_mask = None
        self._brush_item.setPixmap(QPixmap())
        if self.picture is not None:
            self.table.set_rows(self.picture.table, unsaved=self.unsaved_kinds())
        self._region = self.table.selected_region()
        self._rebuild_outline()
        self._update_tools()

    @property
    def scan(self) -> LoadedScan | None:
        """The scan whose section is being edited, as last read."""
        return self._scan

    @property
    def editable(self) -> EditableSection | None:
        """The section being edited, if any."""
        return self._editable

    def is_busy(self) -> bool:
        """Whether a re-analysis is being written."""
        return self._job is not None

    def unsaved_kinds(self) -> dict[str, str]:
        """The shown section's regions changed but not saved, with the kind each will have."""
        kinds = PendingEdits.kinds(self._edits())
        if self._rings_dirty and self._region is not None:
            kinds[self._region] = "edited"  # being dragged: worked out when the mouse lets go
        return kinds

    def unsaved_sections(self, path: Any) -> list[str]:
        """Sections of a scan file with changes not saved."""
        return self._pending.sections(path)

    def outline_items(self) -> list[RegionOutlineItem]:
        """The rings of the selected region's outline (with their vertex handles)."""
        return list(self._items)

    def set_outline(self, region: str, geometry_um: dict[str, Any], *, kind: str = "edited") -> None:
        """Change a region's outline to a polygon (stage µm): what dragging and drawing do."""
        self._set_outline(region, geometry_um, kind=kind, rebuild=True)

    def reset_selected(self) -> None:
        """Bring the selected region back to its automatic outline (or undo its unsaved change)."""
        self._flush_rings()
        editable, region = self._require_editable(), self._region
        if editable is None or region is None:
            return
        kind = editable.regions.records[region].kind
        if kind != "automatic" and region in editable.regions.automatic_masks:
            self._pending.set(editable.path, editable.section_id, RegionReset(region, source="gui"))
        elif region in self._edits():
            self._pending.drop(editable.path, editable.section_id, region)  # only an unsaved change to undo
        else:
            self.message.emit("warning", f"{region_label(region)} has no automatic outline to reset to")
            return
        self._changed(rebuild=True)

    def discard_changes(self) -> None:
        """Forget the shown section's unsaved changes."""
        editable = self._editable
        if editable is not None:
            self._pending.drop(editable.path, editable.section_id)
            self._changed(rebuild=True)

    def reanalyse(self) -> Job | None:
        """Re-analyse the shown section's changes from the stored sums, save and show them (in a thread)."""
        self._flush_rings()
        editable, scan = self._editable, self._scan
        edits = list(self._edits().values())
        if editable is None or scan is None or not edits or self._job is not None:
            return None
        self._stop_tools()
        names = ", ".join(region_label(e.region) for e in edits)
        sid = editable.section_id
        self.edit_hint.setText(f"re-analysing {sid} ({names}) …")
        self._job = run_for_widget(
            self,
            lambda: write_section_edits(scan, sid, edits),
            on_done=lambda written: self._written(written, sid, names),
            on_error=lambda e: self._write_failed(sid, e),
            name="cordscope-reanalyse",
        )
        self._job.finished.connect(self._job_finished)
        self._update_tools()
        return self._job

    # ========================================================== internals

    def _edits(self) -> dict[str, Any]:
        e = self._editable
        return {} if e is None else self._pending.get(e.path, e.section_id)

    def _set_outline(self, region: str, geometry_um: dict[str, Any], *, kind: str, rebuild: bool) -> None:
        editable = self._require_editable()
        if editable is None:
            return
        try:
            edit = RegionEdit(region=region, kind=kind, geometry_um=geometry_um, source="gui")  # type: ignore[arg-type]
        except RegionEditError as e:
            self.message.emit("warning", str(e))
            return
        self._pending.set(editable.path, editable.section_id, edit)
        self._changed(rebuild=rebuild)

    def _require_editable(self) -> EditableSection | None:
        if self._editable is None:
            self.message.emit("warning", self._reason)
        return self._editable

    def _changed(self, *, rebuild: bool) -> None:
        if self.picture is not None:
            self.table.set_rows(self.picture.table, unsaved=self.unsaved_kinds())
        if rebuild:
            self._rebuild_outline()
        self._update_tools()

    def _on_region_chosen(self, region: str) -> None:
        self._flush_rings()
        self._stop_tools()
        self._region = region or None
        self._rebuild_outline()
        self._update_tools()

    def _rebuild_outline(self) -> None:
        scene = self.view.scene()
        assert scene is not None
        for item in self._items:
            item.show_handles(False)
            scene.removeItem(item)
        self._items = []
        self._shown_outline, self._shown_mask, self._rings_dirty = None, None, False
        editable, region = self._editable, self._region
        if editable is None or region is None or region not in editable.regions.masks:
            return
        edits = self._edits()
        outline = current_outline(editable, edits, region)
        self._shown_outline = outline
        if not editable.is_polygon(edits, region):
            self._shown_mask = current_mask(editable, edits, region)
        for p, rings in enumerate(geometry_rings(outline)):
            for r, ring in enumerate(rings):
                item = RegionOutlineItem(self, region, p, r, ring)
                scene.addItem(item)
                item.show_handles(True)
                self._items.append(item)

    def _rings_edited(self, region: str) -> None:
        if not self._rings_dirty:
            self._rings_dirty = True
            self._changed(rebuild=False)  # "(not saved)" in the table as soon as a vertex moves

    def _flush_rings(self) -> None:
        """Turn the dragged rings into the region's change (on release, and before anything else)."""
        editable, region = self._editable, self._region
        if not self._rings_dirty or editable is None or region is None:
            return
        self._rings_dirty = False
        polygons: dict[int, dict[int, list[tuple[float, float]]]] = {}
        for item in self._items:
            polygons.setdefault(item.polygon_index, {})[item.ring_index] = item.vertices_um()
        ordered = [[rings[k] for k in sorted(rings)] for _, rings in sorted(polygons.items())]
        geometry = rings_geometry(ordered)
        if self._shown_mask is None or self._shown_outline is None:
            # a polygon region: the dragged rings are its new polygon
            if geometry is None:
                self.message.emit("warning", f"{region_label(region)}: the outline crosses itself to nothing")
                self._changed(rebuild=True)
                return
            self._set_outline(region, geometry, kind="edited", rebuild=False)
            return
        # a cell mask: only the cells between the shown outline and the dragged one change
        mask = dragged_mask(self._shown_mask, self._shown_outline, geometry, grid=editable.grid)
        if not mask.any():
            self.message.emit("warning", f"{region_label(region)} would be empty; the change is undone")
            self._changed(rebuild=True)
            return
        edit = RegionEdit(region=region, kind="edited", mask=mask, source="gui")
        self._pending.set(editable.path, editable.section_id, edit)
        self._changed(rebuild=False)

    def _on_draw_toggled(self, on: bool) -> None:
        self._flush_rings()
        if on and self._region is None:
            self.draw_button.setChecked(False)
            self.message.emit("warning", "select the region to draw in the table first")
            return
        if on and not self.view.drawing:
            self.brush_button.setChecked(False)
            self.view.start_drawing()
        elif not on and self.view.drawing:
            self.view.cancel_drawing()
        self._update_tools()

    def _on_drawing_changed(self, drawing: bool) -> None:
        if self.draw_button.isChecked() != drawing:
            self.draw_button.setChecked(drawing)

    def _on_polygon_drawn(self, points: list[tuple[float, float]]) -> None:
        region = self._region
        geometry = rings_geometry([[points]])
        if region is None or geometry is None:
            self.message.emit("warning", "the outline drawn is not a polygon (it crosses itself to nothing)")
            return
        self.set_outline(region, geometry, kind="drawn")

    def _on_brush_toggled(self, on: bool) -> None:
        self._flush_rings()
        if on and (self._region is None or self._editable is None):
            self.brush_button.setChecked(False)
            self.message.emit("warning", "select the region to paint in the table first")
            return
        if on:
            self.draw_button.setChecked(False)
            assert self._editable is not None and self._region is not None
            self._brush_mask = current_mask(self._editable, self._edits(), self._region)
            self._show_brush_mask()
            self.view.start_brush(self.brush_radius.value())
        else:
            self.view.stop_brush()
            self._brush_mask = None
            self._brush_item.setPixmap(QPixmap())
        self._update_tools()

    def _on_stroke(self, start: QPointF, end: QPointF) -> None:
        editable, mask = self._editable, self._brush_mask
        if editable is None or mask is None:
            return
        radius = self.brush_radius.value()
        cells = brush_cells(editable.grid, (start.x(), start.y()), (end.x(), end.y()), radius)
        if self.brush_mode.currentText() == "erase":
            mask &= ~cells
        else:
            mask |= cells
        self._show_brush_mask()

    def _on_stroke_finished(self) -> None:
        editable, region, mask = self._editable, self._region, self._brush_mask
        if editable is None or region is None or mask is None:
            return
        if not mask.any():
            self.message.emit("warning", f"{region_label(region)} would be empty; paint some of it back")
            return
        edit = RegionEdit(region=region, kind="edited", mask=mask.copy(), source="gui")
        self._pending.set(editable.path, editable.section_id, edit)
        self._changed(rebuild=True)

    def _show_brush_mask(self) -> None:
        editable, mask = self._editable, self._brush_mask
        if editable is None or mask is None or self._region is None:
            return
        rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
        colour = QColor(outline_color(self._region))
        rgba[mask] = (colour.red(), colour.green(), colour.blue(), BRUSH_ALPHA)
        self._brush_item.setPixmap(QPixmap.fromImage(qimage(rgba)))
        self._brush_item.setScale(editable.grid.cell_um)
        self._brush_item.setPos(float(editable.grid.origin_um[0]), float(editable.grid.origin_um[1]))

    def _stop_tools(self) -> None:
        if self.draw_button.isChecked():
            self.draw_button.setChecked(False)
        if self.brush_button.isChecked():
            self.brush_button.setChecked(False)

    def _written(self, written: SectionWrite, sid: str, names: str) -> None:
        path = written.scan.path
        self._pending.drop(path, sid)
        kinds = ", ".join(f"{region_label(h['region'])} {h['kind']}" for h in written.reanalysis.history)
        self.message.emit(
            "info",
            f"{sid}: {kinds}; table and maps recomputed from the stored sums in "
            f"{written.reanalysis.elapsed_s:.2f} s and written to {path.name} "
            f"({written.elapsed_s:.1f} s in all)",
        )
        if written.picture is not None:
            self.show_picture(written.picture)
        self.set_editing(written.scan, written.editable, written.reason)
        self.regions_written.emit(written.scan)
        region_files().written.emit(str(path), [sid], self)
        logger.info("regions of %s in %s written: %s", sid, path, names)

    def _write_failed(self, section_id: str, error: BaseException) -> None:
        self.message.emit("error", f"cannot re-analyse {section_id}: {error}")

    def _job_finished(self) -> None:
        self._job = None
        self._update_tools()

    def _update_tools(self) -> None:
        editable, region = self._editable, self._region
        busy = self._job is not None
        can_edit = editable is not None and region is not None and not busy
        self.draw_button.setEnabled(can_edit)
        self.brush_button.setEnabled(can_edit)
        self.brush_mode.setEnabled(can_edit)
        self.brush_radius.setEnabled(can_edit)
        pending = self.unsaved_kinds()
        resettable = (
            can_edit
            and editable is not None
            and region is not None
            and (
                region in pending
                or (
                    editable.regions.records[region].kind != "automatic"
                    and region in editable.regions.automatic_masks
                )
            )
        )
        self.reset_button.setEnabled(bool(resettable))
        self.discard_button.setEnabled(bool(pending) and not busy)
        self.reanalyse_button.setEnabled(bool(pending) and not busy)
        if busy:
            return
        if editable is None:
            text = self._reason
        elif pending:
            names = ", ".join(region_label(r) for r in pending)
            text = (
                f"Not saved: {names}. Re-analyse computes the table and maps and saves the regions "
                "in the file."
            )
        elif region is None:
            text = "Select a region in the table to correct its outline."
        else:
            kind = editable.regions.records[region].kind
            text = (
                f"{region_label(region)} ({kind}): drag its vertices, draw a new outline or paint it with "
                "the brush; the wheel zooms, dragging the picture pans."
            )
        others = (
            [s for s in self._pending.sections(editable.path) if s != editable.section_id] if editable else []
        )
        if others:
            text += f" Also not saved: {', '.join(others)}."
        self.edit_hint.setText(text)
