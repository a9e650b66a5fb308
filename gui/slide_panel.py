"""The "Slide" tab: the overview image, the section outlines on it, and the section table.

One model holds the sections (:class:`SectionTableModel`, a list of
:class:`Section`); the table is a view of it, and so are the outlines drawn
over the overview (:class:`SectionItem`): dragging a vertex writes the new
position into the model, editing a cell changes the model, and both views
follow the model's signals. Scene units are stage µm (x right, y down, as
the overview's rows and columns), so an outline's vertices are its
``polygon_um``.

Slow work (acquiring, loading and saving the overview, finding sections)
runs off the Qt thread (:mod:`gui.workers`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PyQt6.QtCore import (
    QAbstractTableModel,
    QItemSelection,
    QItemSelectionModel,
    QModelIndex,
    QPersistentModelIndex,
    QPointF,
    QRectF,
    Qt,
    QTimer,
    pyqtSignal,
)
from PyQt6.QtGui import (
    QBrush,
    QColor,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
    QPolygonF,
    QWheelEvent,
)
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGraphicsEllipseItem,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QGraphicsPolygonItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStyledItemDelegate,
    QStyleOptionGraphicsItem,
    QStyleOptionViewItem,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from acquisition.hardware import CordScopeCore, objective_group
from acquisition.overview import (
    DEFAULT_REGION_UM,
    Overview,
    OverviewCancelledError,
    acquire_overview,
    load_overview,
    save_overview,
)
from analysis.sections import FoundSection, find_sections

from .workers import Job

__all__ = ["COLUMNS", "Section", "SectionTableModel", "SlidePanel", "SlideView", "display_image"]

logger = logging.getLogger(__name__)

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
ORIENTATIONS = ("coronal", "horizontal")
SIDES = ("", "left", "right")  # "" = unknown (None in the plan)

#: Where a section's outline came from; "found" ones are replaced by "Find sections".
SOURCES = ("found", "drawn", "edited", "plan")


# ====================================================================== model


@dataclass
class Section:
    """One section: outline (stage µm) and what it is; the fields of ``SectionPlan`` the GUI edits."""

    id: str
    polygon_um: list[tuple[float, float]]
    animal: str = ""
    group: str = ""
    level: str = ""
    orientation: str = "coronal"
    injection_side: str | None = None
    source: str = "drawn"
    #: other SectionPlan fields given to ``set_sections`` (kept as they were)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def area_um2(self) -> float:
        """Shoelace area of the outline (µm²)."""
        if len(self.polygon_um) < 3:
            return 0.0
        xy = np.asarray(self.polygon_um, dtype=np.float64)
        x, y = xy[:, 0], xy[:, 1]
        return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)

    @property
    def centroid_um(self) -> tuple[float, float]:
        """Mean of the vertices (µm): inside any outline find_sections makes, enough for matching."""
        xy = np.asarray(self.polygon_um, dtype=np.float64)
        return (float(xy[:, 0].mean()), float(xy[:, 1].mean()))

    def contains(self, x: float, y: float) -> bool:
        """Whether stage point (x, y) lies inside the outline."""
        return _qpolygon(self.polygon_um).containsPoint(QPointF(x, y), Qt.FillRule.OddEvenFill)

    def to_plan_dict(self) -> dict[str, Any]:
        """A dict valid for ``acquisition.plan.SectionPlan``."""
        out: dict[str, Any] = {
            "id": self.id,
            "polygon_um": [[round(float(x), 1), round(float(y), 1)] for x, y in self.polygon_um],
            "animal": self.animal,
            "group": self.group,
            "level": self.level,
            "orientation": self.orientation,
            "injection_side": self.injection_side,
        }
        out.update(self.extra)
        return out


def _qpolygon(points: Sequence[Sequence[float]]) -> QPolygonF:
    return QPolygonF([QPointF(float(x), float(y)) for x, y in points])


#: Table columns: (header, Section attribute or None for a computed one)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("ID", "id"),
    ("Animal", "animal"),
    ("Group", "group"),
    ("Level", "level"),
    ("Orientation", "orientation"),
    ("Injection side", "injection_side"),
    ("Area (mm²)", "area"),
    ("Outline", "source"),
)
_COL = {attr: i for i, (_, attr) in enumerate(COLUMNS)}
_EDITABLE = {"id", "animal", "group", "level", "orientation", "injection_side"}


class SectionTableModel(QAbstractTableModel):
    """The sections of the slide, one row each; the single source of truth of the Slide tab.

    Signals
    -------
    polygon_changed(int)
        The outline of a row changed (row number).
    problem(str)
        An edit was refused (e.g. a duplicate id); the text says why.
    """

    polygon_changed = pyqtSignal(int)
    problem = pyqtSignal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._rows: list[Section] = []

    # ---- Qt model API

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, D102
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, D102
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(  # noqa: D102
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section][0]
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Vertical:
            return str(section + 1)
        return None

    def flags(self, index: QModelIndex | QPersistentModelIndex) -> Qt.ItemFlag:  # noqa: D102
        base = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.isValid() and COLUMNS[index.column()][1] in _EDITABLE:
            base |= Qt.ItemFlag.ItemIsEditable
        return base

    def data(  # noqa: D102
        self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if not index.isValid():
            return None
        s = self._rows[index.row()]
        attr = COLUMNS[index.column()][1]
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            if attr == "area":
                return f"{s.area_um2 / 1e6:.2f}"
            if attr == "injection_side":
                return s.injection_side or ""
            return getattr(s, attr)
        if role == Qt.ItemDataRole.ToolTipRole and attr == "source":
            return {
                "found": "found automatically; replaced by the next “Find sections”",
                "drawn": "drawn by hand",
                "edited": "found automatically, then edited by hand",
                "plan": "from a plan",
            }.get(s.source)
        return None

    def setData(  # noqa: D102
        self, index: QModelIndex | QPersistentModelIndex, value: Any, role: int = Qt.ItemDataRole.EditRole
    ) -> bool:
        if not index.isValid() or role != Qt.ItemDataRole.EditRole:
            return False
        row, attr = index.row(), COLUMNS[index.column()][1]
        if attr not in _EDITABLE:
            return False
        s = self._rows[row]
        text = "" if value is None else str(value).strip()
        if attr == "id":
            if not _ID_PATTERN.match(text) or len(text) > 64:
                self.problem.emit(f"section id {text!r}: use letters, digits, '_', '.', '-' (at most 64)")
                return False
            if any(o.id == text for i, o in enumerate(self._rows) if i != row):
                self.problem.emit(f"section id {text!r} is already used")
                return False
            s.id = text
        elif attr == "orientation":
            if text not in ORIENTATIONS:
                self.problem.emit(f"orientation must be one of {', '.join(ORIENTATIONS)}, got {text!r}")
                return False
            s.orientation = text
            if text != "horizontal":
                s.extra.pop("lesion_epicenter_um", None)  # the plan allows it on horizontal sections only
        elif attr == "injection_side":
            if text not in SIDES:
                self.problem.emit(f"injection side must be left, right or empty, got {text!r}")
                return False
            s.injection_side = text or None
        else:
            setattr(s, attr, text)
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole])
        return True

    # ---- sections API

    def sections(self) -> list[Section]:
        """The sections in table order (the objects themselves; do not mutate)."""
        return list(self._rows)

    def section(self, row: int) -> Section:
        """The section of one row."""
        return self._rows[row]

    def set_sections(self, sections: Sequence[Section]) -> None:
        """Replace every row."""
        self.beginResetModel()
        self._rows = list(sections)
        self.endResetModel()

    def add(self, section: Section) -> int:
        """Append a section (its id must be unused); return its row."""
        if any(o.id == section.id for o in self._rows):
            raise ValueError(f"section id {section.id!r} is already used")
        row = len(self._rows)
        self.beginInsertRows(QModelIndex(), row, row)
        self._rows.append(section)
        self.endInsertRows()
        return row

    def remove_rows(self, rows: Sequence[int]) -> None:
        """Delete some rows."""
        for row in sorted(set(rows), reverse=True):
            if 0 <= row < len(self._rows):
                self.beginRemoveRows(QModelIndex(), row, row)
                del self._rows[row]
                self.endRemoveRows()

    def set_polygon(self, row: int, polygon_um: Sequence[Sequence[float]], *, edited: bool = True) -> None:
        """Replace a row's outline (a "found" one becomes "edited" when ``edited``)."""
        s = self._rows[row]
        s.polygon_um = [(float(x), float(y)) for x, y in polygon_um]
        if edited and s.source == "found":
            s.source = "edited"
        left, right = self.index(row, _COL["area"]), self.index(row, _COL["source"])
        self.dataChanged.emit(left, right, [Qt.ItemDataRole.DisplayRole])
        self.polygon_changed.emit(row)

    def row_of(self, section_id: str) -> int:
        """Row of a section id (-1 if absent)."""
        return next((i for i, s in enumerate(self._rows) if s.id == section_id), -1)

    def next_id(self, prefix: str = "S") -> str:
        """An unused id ``S01``, ``S02``… after the highest one in use."""
        used = {s.id for s in self._rows}
        numbers = [int(m.group(1)) for s in used if (m := re.fullmatch(rf"{prefix}(\d+)", s))]
        n = max(numbers, default=0) + 1
        while f"{prefix}{n:02d}" in used:
            n += 1
        return f"{prefix}{n:02d}"


class _ChoiceDelegate(QStyledItemDelegate):
    """A combo box editor for a column with fixed choices."""

    def __init__(self, choices: Sequence[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._choices = list(choices)

    def createEditor(
        self, parent: QWidget | None, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> QWidget:
        combo = QComboBox(parent)
        combo.addItems([c or "(unknown)" for c in self._choices])
        # commit as soon as a choice is made, as a spreadsheet does
        combo.activated.connect(lambda _i: self.commitData.emit(combo))
        return combo

    def setEditorData(self, editor: QWidget | None, index: QModelIndex | QPersistentModelIndex) -> None:
        if isinstance(editor, QComboBox):
            value = index.data(Qt.ItemDataRole.EditRole) or ""
            editor.setCurrentIndex(max(0, self._choices.index(value) if value in self._choices else 0))

    def setModelData(
        self,
        editor: QWidget | None,
        model: Any,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        if isinstance(editor, QComboBox) and model is not None:
            model.setData(index, self._choices[editor.currentIndex()], Qt.ItemDataRole.EditRole)


# ================================================================== graphics

_FOUND_COLOUR = QColor(0, 200, 255)
_HAND_COLOUR = QColor(255, 210, 0)
_SELECTED_COLOUR = QColor(255, 90, 40)
_HANDLE_PX = 8.0


def _pen(colour: QColor, width: float) -> QPen:
    pen = QPen(colour, width)
    pen.setCosmetic(True)  # width in screen pixels at any zoom
    return pen


class VertexHandle(QGraphicsEllipseItem):
    """A draggable vertex of a section outline; constant size on screen."""

    def __init__(self, outline: SectionItem, index: int, pos: QPointF) -> None:
        r = _HANDLE_PX / 2
        super().__init__(-r, -r, 2 * r, 2 * r, outline)
        self.outline = outline
        self.index = index
        self.setPos(pos)
        self.setPen(_pen(QColor(0, 0, 0), 1.0))
        self.setBrush(QBrush(QColor(255, 255, 255)))
        self.setCursor(Qt.CursorShape.SizeAllCursor)
        self.setZValue(10)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIsMovable)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemSendsGeometryChanges)
        self.setToolTip("drag to move this vertex")

    def itemChange(self, change: QGraphicsItem.GraphicsItemChange, value: Any) -> Any:
        if change == QGraphicsItem.GraphicsItemChange.ItemPositionHasChanged:
            self.outline.vertex_moved(self.index, self.pos())
        return super().itemChange(change, value)

    def mouseReleaseEvent(self, event: Any) -> None:
        super().mouseReleaseEvent(event)
        self.outline.drag_finished()


class SectionItem(QGraphicsPolygonItem):
    """The outline of one section over the overview; vertices draggable when selected."""

    def __init__(self, panel: SlidePanel, section: Section) -> None:
        super().__init__(_qpolygon(section.polygon_um))
        self._panel = panel
        self.section_id = section.id
        self._source = section.source
        self._syncing = False
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIsSelectable)
        self.setAcceptHoverEvents(True)
        self.setZValue(1)
        self.label = QGraphicsSimpleTextItem(section.id, self)
        self.label.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
        self.label.setBrush(QBrush(QColor(255, 255, 255)))
        self.label.setZValue(5)
        self.handles: list[VertexHandle] = []
        self._restyle()
        self._place_label()

    def vertices_um(self) -> list[tuple[float, float]]:
        """The outline's vertices in stage µm."""
        poly = self.polygon()
        return [(poly.at(i).x(), poly.at(i).y()) for i in range(poly.count())]

    def set_section(self, section: Section) -> None:
        """Follow the model: outline, id and source."""
        self.section_id = section.id
        self._source = section.source
        self.label.setText(section.id)
        if [(round(x, 3), round(y, 3)) for x, y in self.vertices_um()] != [
            (round(x, 3), round(y, 3)) for x, y in section.polygon_um
        ]:
            self._syncing = True
            try:
                self.setPolygon(_qpolygon(section.polygon_um))
                self._rebuild_handles()
            finally:
                self._syncing = False
        self._restyle()
        self._place_label()

    def vertex_moved(self, index: int, pos: QPointF) -> None:
        """A handle moved: move the vertex and tell the model."""
        if self._syncing:
            return
        poly = self.polygon()
        if not 0 <= index < poly.count():
            return
        poly[index] = QPointF(pos)
        self.setPolygon(poly)
        self._panel._outline_edited(self)

    def drag_finished(self) -> None:
        """The user let go of a handle."""
        self._place_label()

    def itemChange(self, change: QGraphicsItem.GraphicsItemChange, value: Any) -> Any:
        if change == QGraphicsItem.GraphicsItemChange.ItemSelectedHasChanged:
            self._rebuild_handles()
            self._restyle()
        return super().itemChange(change, value)

    def _rebuild_handles(self) -> None:
        scene = self.scene()
        for h in self.handles:
            h.setParentItem(None)
            if scene is not None:
                scene.removeItem(h)
        self.handles = []
        if self.isSelected():
            poly = self.polygon()
            self.handles = [VertexHandle(self, i, poly.at(i)) for i in range(poly.count())]

    def _restyle(self) -> None:
        colour = _HAND_COLOUR if self._source in ("drawn", "edited", "plan") else _FOUND_COLOUR
        if self.isSelected():
            self.setPen(_pen(_SELECTED_COLOUR, 3.0))
            fill = QColor(_SELECTED_COLOUR)
            fill.setAlpha(22)
        else:
            self.setPen(_pen(colour, 2.0))
            fill = QColor(colour)
            fill.setAlpha(18)
        self.setBrush(QBrush(fill))

    def _place_label(self) -> None:
        r = self.polygon().boundingRect()
        self.label.setPos(r.left(), r.top())

    def paint(
        self, painter: QPainter | None, option: QStyleOptionGraphicsItem | None, widget: Any = None
    ) -> None:
        # no dashed selection rectangle: the colour shows the selection
        if option is not None:
            from PyQt6.QtWidgets import QStyle

            option.state &= ~QStyle.StateFlag.State_Selected
        super().paint(painter, option, widget)


class SlideView(QGraphicsView):
    """The overview and outlines; wheel zooms, drag pans, and draws outlines in "add" mode.

    Signals
    -------
    polygon_drawn(object)
        A new outline was closed: list of (x, y) stage µm, ≥ 3 vertices.
    drawing_changed(bool)
        Drawing mode started (True) or ended (False).
    delete_pressed()
        The Delete or Backspace key.
    """

    polygon_drawn = pyqtSignal(object)
    drawing_changed = pyqtSignal(bool)
    delete_pressed = pyqtSignal()

    def __init__(self, scene: QGraphicsScene, parent: QWidget | None = None) -> None:
        super().__init__(scene, parent)
        self.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setBackgroundBrush(QBrush(QColor(30, 30, 30)))
        self._points: list[QPointF] = []
        self._drawing = False
        self._rubber = QGraphicsPathItem()
        self._rubber.setPen(_pen(_HAND_COLOUR, 2.0))
        self._rubber.setZValue(20)
        self._rubber_added = False

    # ---- drawing

    @property
    def drawing(self) -> bool:
        """Whether clicks add vertices of a new outline."""
        return self._drawing

    def start_drawing(self) -> None:
        """Clicks add vertices; double-click or Enter closes the outline, Esc cancels."""
        self._points = []
        self._drawing = True
        self.setDragMode(QGraphicsView.DragMode.NoDrag)
        _viewport(self).setCursor(Qt.CursorShape.CrossCursor)
        scene = self.scene()
        if not self._rubber_added and scene is not None:
            scene.addItem(self._rubber)
            self._rubber_added = True
        self._update_rubber(None)
        self.setFocus()
        self.drawing_changed.emit(True)

    def cancel_drawing(self) -> None:
        """Leave drawing mode without a new outline."""
        self._stop_drawing()

    def finish_drawing(self) -> bool:
        """Close the outline being drawn (≥ 3 points); False if too few points."""
        if len(self._points) < 3:
            return False
        points = [(p.x(), p.y()) for p in self._points]
        self._stop_drawing()
        self.polygon_drawn.emit(points)
        return True

    def _stop_drawing(self) -> None:
        was = self._drawing
        self._drawing = False
        self._points = []
        self._update_rubber(None)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        _viewport(self).unsetCursor()
        if was:
            self.drawing_changed.emit(False)

    def _update_rubber(self, cursor: QPointF | None) -> None:
        path = QPainterPath()
        if self._points:
            path.moveTo(self._points[0])
            for p in self._points[1:]:
                path.lineTo(p)
            if cursor is not None:
                path.lineTo(cursor)
        self._rubber.setPath(path)
        self._rubber.setVisible(bool(self._points))

    def mousePressEvent(self, event: QMouseEvent | None) -> None:  # noqa: D102
        if event is not None and self._drawing:
            if event.button() == Qt.MouseButton.LeftButton:
                self._points.append(self.mapToScene(event.position().toPoint()))
                self._update_rubber(None)
            elif event.button() == Qt.MouseButton.RightButton:
                self.cancel_drawing()
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent | None) -> None:  # noqa: D102
        if event is not None and self._drawing:
            # the first click of the double-click already added this vertex
            self.finish_drawing()
            event.accept()
            return
        super().mouseDoubleClickEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent | None) -> None:  # noqa: D102
        if event is not None and self._drawing:
            self._update_rubber(self.mapToScene(event.position().toPoint()))
        super().mouseMoveEvent(event)

    def keyPressEvent(self, event: QKeyEvent | None) -> None:  # noqa: D102
        if event is None:
            return
        key = event.key()
        if self._drawing and key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.finish_drawing()
        elif self._drawing and key == Qt.Key.Key_Escape:
            self.cancel_drawing()
        elif not self._drawing and key in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace):
            self.delete_pressed.emit()
        else:
            super().keyPressEvent(event)
            return
        event.accept()

    # ---- zoom

    def wheelEvent(self, event: QWheelEvent | None) -> None:  # noqa: D102
        if event is None:
            return
        factor = 1.25 ** (event.angleDelta().y() / 120.0)
        self.scale(factor, factor)
        event.accept()

    def fit(self, rect: QRectF) -> None:
        """Show a scene rectangle (µm) whole."""
        if rect.isValid() and not rect.isEmpty():
            self.fitInView(rect, Qt.AspectRatioMode.KeepAspectRatio)


# ================================================================== overview


def _viewport(view: QGraphicsView) -> QWidget:
    viewport = view.viewport()
    assert viewport is not None
    return viewport


def display_image(image: NDArray[Any], *, low_pct: float = 0.5, high_pct: float = 99.8) -> QImage:
    """An overview as an 8-bit grey QImage, stretched between two percentiles.

    Parameters
    ----------
    image : (H, W) array
        Overview pixels (any real dtype).
    low_pct, high_pct : float
        Percentiles mapped to black and white (computed on a subsample).
    """
    a = np.asarray(image, dtype=np.float32)
    step = max(1, int(math.sqrt(a.size / 250_000)))
    sample = a[::step, ::step]
    finite = sample[np.isfinite(sample)]
    lo, hi = np.percentile(finite, [low_pct, high_pct]) if finite.size else (0.0, 1.0)
    if not hi > lo:
        hi = lo + 1.0
    scaled = np.clip((np.nan_to_num(a, nan=float(lo)) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    scaled = np.ascontiguousarray(scaled)
    h, w = scaled.shape
    return QImage(scaled.tobytes(), w, h, w, QImage.Format.Format_Grayscale8).copy()


@dataclass(frozen=True)
class _ShownOverview:
    overview: Overview
    image: QImage


def _prepare(overview: Overview) -> _ShownOverview:
    return _ShownOverview(overview, display_image(overview.image))


# ===================================================================== panel


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
        t.setItemDelegateForColumn(_COL["orientation"], _ChoiceDelegate(ORIENTATIONS, t))
        t.setItemDelegateForColumn(_COL["injection_side"], _ChoiceDelegate(SIDES, t))
        header, rows = t.horizontalHeader(), t.verticalHeader()
        assert header is not None and rows is not None
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        rows.setDefaultSectionSize(24)
        sel = t.selectionModel()
        assert sel is not None
        sel.selectionChanged.connect(self._on_table_selection)

    def _build_controls(self) -> None:
        # -- overview settings
        self.region_boxes: list[QDoubleSpinBox] = []
        region = QGridLayout()
        for i, (label, value) in enumerate(zip(("x0", "y0", "x1", "y1"), DEFAULT_REGION_UM, strict=True)):
            box = QDoubleSpinBox()
            box.setRange(-200.0, 200.0)
            box.setDecimals(1)
            box.setSingleStep(1.0)
            box.setSuffix(" mm")
            box.setValue(value / 1000.0)
            box.setToolTip(f"overview region {label} (stage mm)")
            self.region_boxes.append(box)
            region.addWidget(QLabel(label), i // 2, 2 * (i % 2))
            region.addWidget(box, i // 2, 2 * (i % 2) + 1)
        self.objective_combo = QComboBox()
        self.channel_combo = QComboBox()
        self.exposure_box = QDoubleSpinBox()
        self.exposure_box.setRange(0.0, 10_000.0)
        self.exposure_box.setDecimals(1)
        self.exposure_box.setSuffix(" ms")
        self.exposure_box.setValue(20.0)
        self.acquire_button = QPushButton("Acquire overview")
        self.acquire_button.setToolTip("Tile the region at the overview objective and channel")
        self.acquire_button.clicked.connect(self.acquire_overview)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m tiles")
        self.progress.setTextVisible(False)
        self.progress.setValue(0)
        self.load_button = QPushButton("Load overview…")
        self.load_button.clicked.connect(self._ask_load_overview)
        self.save_button = QPushButton("Save overview…")
        self.save_button.clicked.connect(self._ask_save_overview)
        self.overview_info = QLabel("No overview")
        self.overview_info.setWordWrap(True)

        ov_box = QGroupBox("Overview")
        form = QFormLayout(ov_box)
        form.addRow(QLabel("Region"))
        form.addRow(region)
        form.addRow("Objective", self.objective_combo)
        form.addRow("Channel", self.channel_combo)
        form.addRow("Exposure", self.exposure_box)
        row = QHBoxLayout()
        row.addWidget(self.acquire_button, 1)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        form.addRow(self.progress)
        row = QHBoxLayout()
        row.addWidget(self.load_button)
        row.addWidget(self.save_button)
        form.addRow(row)
        form.addRow(self.overview_info)

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
        side_layout.addWidget(ov_box)
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
        for combo, presets, preferred in (
            (self.objective_combo, _presets(core, objective_group(core) if core else ""), "4x"),
            (self.channel_combo, _presets(core, core.getChannelGroup() if core else ""), "DAPI"),
        ):
            combo.clear()
            combo.addItems(presets)
            if preferred in presets:
                combo.setCurrentText(preferred)
            elif presets:
                # the lowest magnification is the likely overview objective
                combo.setCurrentIndex(0)
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
        self._show(_prepare(overview) if overview is not None else None)

    # ---------------------------------------------------------- overview work

    def region_um(self) -> tuple[float, float, float, float]:
        """The overview region from the settings (x0, y0, x1, y1), stage µm."""
        x0, y0, x1, y1 = (b.value() * 1000.0 for b in self.region_boxes)
        return (x0, y0, x1, y1)

    def set_region_um(self, region_um: Sequence[float]) -> None:
        """Set the overview region (x0, y0, x1, y1), stage µm."""
        for box, value in zip(self.region_boxes, region_um, strict=True):
            box.setValue(float(value) / 1000.0)

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
        kwargs: dict[str, Any] = {
            "region_um": self.region_um(),
            "objective_group": objective_group(core),
            "objective": self.objective_combo.currentText(),
            "channel_group": core.getChannelGroup(),
            "channel": self.channel_combo.currentText(),
            "exposure_ms": float(self.exposure_box.value()),
        }
        job = Job("overview")
        job.progress.connect(self._on_progress)
        self.progress.setRange(0, 0)  # busy until the first tile
        self.progress.setValue(0)

        def work() -> _ShownOverview:
            ov = acquire_overview(core, progress=job.report_progress, should_stop=job.is_cancelled, **kwargs)
            return _prepare(ov)

        x0, y0, x1, y1 = kwargs["region_um"]
        self.message.emit(
            "info",
            f"acquiring the overview of x {x0 / 1000:g}–{x1 / 1000:g} mm, y {y0 / 1000:g}–{y1 / 1000:g} mm "
            f"at {kwargs['objective']} in {kwargs['channel']}",
        )
        return self._start(job, work, self._on_overview_acquired, what="acquire the overview")

    def _on_overview_acquired(self, shown: _ShownOverview) -> None:
        self._show(shown)
        h, w = shown.overview.shape
        self.message.emit(
            "info", f"overview acquired: {w} × {h} px at {shown.overview.pixel_size_um:.2f} µm/px"
        )

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setTextVisible(True)
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def cancel(self) -> None:
        """Stop the running overview after the current tile."""
        if self._job is not None:
            self._job.cancel()
            self.cancel_button.setEnabled(False)

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

        def done(shown: _ShownOverview) -> None:
            self._show(shown)
            self.message.emit("info", f"overview loaded from {path}")

        return self._start(
            Job("load-overview"), lambda: _prepare(load_overview(path)), done, what=f"load {path}"
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
        self.progress.setRange(0, max(self.progress.maximum(), 1))
        self._update_buttons()

    def _show(self, shown: _ShownOverview | None) -> None:
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
            x0, y0, x1, y1 = ov.bbox_um
            self.overview_info.setText(
                f"{ov.shape[1]} × {ov.shape[0]} px, {ov.pixel_size_um:.2f} µm/px, "
                f"{ov.objective} {ov.channel}; "
                f"x {x0 / 1000:.1f}–{x1 / 1000:.1f} mm, y {y0 / 1000:.1f}–{y1 / 1000:.1f} mm"
            )
        else:
            self.overview_info.setText("No overview")
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
            self.view.fit(rect)

    # -------------------------------------------------------- found sections

    def _on_found(self, found: list[FoundSection]) -> None:
        old = self.model.sections()
        kept = [s for s in old if s.source != "found"]
        previous = [s for s in old if s.source == "found"]
        used = {s.id for s in kept}
        new: list[Section] = []
        skipped = 0
        for f in found:
            polygon = [(float(x), float(y)) for x, y in f.polygon_um]
            candidate = Section(id="", polygon_um=polygon, source="found")
            cx, cy = candidate.centroid_um
            if any(s.contains(cx, cy) or candidate.contains(*s.centroid_um) for s in kept):
                skipped += 1  # the user's own outline of this section wins
                continue
            # a section found again keeps its id and what the user typed about it
            match = next(
                (s for s in previous if candidate.contains(*s.centroid_um) and s.id not in used), None
            )
            if match is not None:
                section = replace(match, polygon_um=polygon, extra=dict(match.extra))
            else:
                section = replace(
                    candidate,
                    id=_free_id(f.index, used, width=max(2, len(str(len(found))))),
                    orientation=_guess_orientation(f.bbox_um),
                )
            used.add(section.id)
            new.append(section)
        self.model.set_sections(kept + new)
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
        self._items = [SectionItem(self, s) for s in self.model.sections()]
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
        self.acquire_button.setEnabled(self.core is not None and not busy)
        self.cancel_button.setEnabled(acquiring)
        self.load_button.setEnabled(not busy)
        self.save_button.setEnabled(not busy and self._overview is not None)
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


def _presets(core: CordScopeCore | None, group: str) -> list[str]:
    if core is None or not group or not core.isGroupDefined(group):
        return []
    return [str(p) for p in core.getAvailableConfigs(group)]


#: A found section this many times longer than wide is taken for a horizontal one.
HORIZONTAL_ASPECT = 2.5


def _guess_orientation(bbox_um: Sequence[float]) -> str:
    """Coronal sections are about as wide as high; horizontal ones run several mm along the cord."""
    x0, y0, x1, y1 = (float(v) for v in bbox_um)
    w, h = x1 - x0, y1 - y0
    return "horizontal" if max(w, h) >= HORIZONTAL_ASPECT * max(min(w, h), 1e-9) else "coronal"


def _free_id(index: int, used: set[str], *, width: int) -> str:
    n = index
    while f"S{n:0{width}d}" in used:
        n += 1
    return f"S{n:0{width}d}"
