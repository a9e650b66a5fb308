"""Outlines on a graphics scene in stage µm: draggable vertices, drawing by clicks, brush strokes.

The slide scene (section outlines over the overview) and the region editor
(region outlines over a section's mosaic) edit outlines the same way, so both
use these pieces:

* :class:`EditablePolygonItem`, a closed outline whose vertices show as
  :class:`VertexHandle` items and can be dragged; subclasses hear of a moved
  vertex (:meth:`EditablePolygonItem.outline_edited`) and of the end of a drag
  (:meth:`EditablePolygonItem.drag_finished`);
* :class:`OutlineView`, a view that zooms with the wheel, pans by dragging,
  and has two tools: *drawing* (click the corners of a new outline,
  double-click or Enter closes it, Esc or a right click cancels) and
  *brush* (press and drag: each mouse move is a stroke segment, in scene µm).

Scene units are stage µm (x right, y down), so an outline's vertices are its
stage coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PyQt6.QtCore import QPointF, QRectF, Qt, pyqtSignal
from PyQt6.QtGui import (
    QBrush,
    QColor,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPen,
    QPolygonF,
    QWheelEvent,
)
from PyQt6.QtWidgets import (
    QGraphicsEllipseItem,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsPolygonItem,
    QGraphicsScene,
    QGraphicsView,
    QWidget,
)

__all__ = [
    "HANDLE_PX",
    "EditablePolygonItem",
    "OutlineView",
    "VertexHandle",
    "cosmetic_pen",
    "qpolygon",
]

#: Diameter of a vertex handle on screen (pixels, at any zoom).
HANDLE_PX = 8.0
#: Colour of the outline being drawn.
DRAWING_COLOUR = QColor(255, 210, 0)


def cosmetic_pen(colour: QColor, width: float) -> QPen:
    """A pen whose width is in screen pixels at any zoom."""
    pen = QPen(colour, width)
    pen.setCosmetic(True)
    return pen


def qpolygon(points: Sequence[Sequence[float]]) -> QPolygonF:
    """A QPolygonF of (x, y) points."""
    return QPolygonF([QPointF(float(x), float(y)) for x, y in points])


class VertexHandle(QGraphicsEllipseItem):
    """A draggable vertex of an :class:`EditablePolygonItem`; constant size on screen."""

    def __init__(self, outline: EditablePolygonItem, index: int, pos: QPointF) -> None:
        r = HANDLE_PX / 2
        super().__init__(-r, -r, 2 * r, 2 * r, outline)
        self.outline = outline
        self.index = index
        self.setPos(pos)
        self.setPen(cosmetic_pen(QColor(0, 0, 0), 1.0))
        self.setBrush(QBrush(QColor(255, 255, 255)))
        self.setCursor(Qt.CursorShape.SizeAllCursor)
        self.setZValue(10)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIsMovable)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemSendsGeometryChanges)
        self.setToolTip("drag to move this vertex")

    def itemChange(self, change: QGraphicsItem.GraphicsItemChange, value: Any) -> Any:  # noqa: D102
        if change == QGraphicsItem.GraphicsItemChange.ItemPositionHasChanged:
            self.outline.vertex_moved(self.index, self.pos())
        return super().itemChange(change, value)

    def mouseReleaseEvent(self, event: Any) -> None:  # noqa: D102
        super().mouseReleaseEvent(event)
        self.outline.drag_finished()


class EditablePolygonItem(QGraphicsPolygonItem):
    """A closed outline (stage µm) whose vertices can be dragged while its handles are shown.

    Subclasses override :meth:`outline_edited` (a vertex moved) and
    :meth:`drag_finished` (the mouse let go of a handle).
    """

    def __init__(self, points: Sequence[Sequence[float]], parent: QGraphicsItem | None = None) -> None:
        super().__init__(qpolygon(points), parent)
        self.handles: list[VertexHandle] = []
        self._handles_shown = False
        self._syncing = False

    def vertices_um(self) -> list[tuple[float, float]]:
        """The outline's vertices in stage µm."""
        poly = self.polygon()
        return [(poly.at(i).x(), poly.at(i).y()) for i in range(poly.count())]

    def set_vertices(self, points: Sequence[Sequence[float]]) -> None:
        """Replace the outline (from a model: no :meth:`outline_edited`); handles follow."""
        if [(round(x, 3), round(y, 3)) for x, y in self.vertices_um()] == [
            (round(float(x), 3), round(float(y), 3)) for x, y in points
        ]:
            return
        self._syncing = True
        try:
            self.setPolygon(qpolygon(points))
            self._rebuild_handles()
        finally:
            self._syncing = False

    @property
    def handles_shown(self) -> bool:
        """Whether the vertices show as draggable handles."""
        return self._handles_shown

    def show_handles(self, on: bool) -> None:
        """Show (or hide) a draggable handle on every vertex."""
        self._handles_shown = bool(on)
        self._rebuild_handles()

    def vertex_moved(self, index: int, pos: QPointF) -> None:
        """A handle moved: move its vertex, then :meth:`outline_edited`."""
        if self._syncing:
            return
        poly = self.polygon()
        if not 0 <= index < poly.count():
            return
        poly[index] = QPointF(pos)
        self.setPolygon(poly)
        self.outline_edited(index)

    def outline_edited(self, index: int) -> None:
        """Vertex ``index`` was moved by the user (override to tell a model)."""

    def drag_finished(self) -> None:
        """The user let go of a handle (override to act once per drag)."""

    def _rebuild_handles(self) -> None:
        scene = self.scene()
        for h in self.handles:
            h.setParentItem(None)
            if scene is not None:
                scene.removeItem(h)
        self.handles = []
        if self._handles_shown:
            poly = self.polygon()
            self._syncing = True
            try:
                self.handles = [VertexHandle(self, i, poly.at(i)) for i in range(poly.count())]
            finally:
                self._syncing = False


class OutlineView(QGraphicsView):
    """A view of a scene in stage µm: wheel zoom, drag to pan, and the drawing and brush tools.

    Signals
    -------
    polygon_drawn(object)
        A new outline was closed: list of (x, y) stage µm, ≥ 3 vertices.
    drawing_changed(bool)
        Drawing mode started (True) or ended (False).
    stroke_moved(object, object)
        Brush mode, mouse pressed: a stroke segment from one scene point (QPointF, µm) to another
        (the same point for the press itself).
    stroke_finished()
        Brush mode: the mouse button was let go.
    delete_pressed()
        The Delete or Backspace key (outside drawing mode).
    zoomed()
        The user zoomed with the wheel.
    """

    polygon_drawn = pyqtSignal(object)
    drawing_changed = pyqtSignal(bool)
    stroke_moved = pyqtSignal(object, object)
    stroke_finished = pyqtSignal()
    delete_pressed = pyqtSignal()
    zoomed = pyqtSignal()

    def __init__(self, scene: QGraphicsScene | None = None, parent: QWidget | None = None) -> None:
        super().__init__(scene if scene is not None else QGraphicsScene(), parent)
        if scene is None:
            own = self.scene()
            assert own is not None
            own.setParent(self)
        self.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self._points: list[QPointF] = []
        self._drawing = False
        self._rubber = QGraphicsPathItem()
        self._rubber.setPen(cosmetic_pen(DRAWING_COLOUR, 2.0))
        self._rubber.setZValue(20)
        self._rubber_added = False
        self._brushing = False
        self._stroke_last: QPointF | None = None
        self._brush_radius_um = 10.0
        self._brush_cursor = QGraphicsEllipseItem()
        self._brush_cursor.setPen(cosmetic_pen(QColor(255, 255, 255), 1.0))
        self._brush_cursor.setZValue(21)
        self._brush_cursor.setVisible(False)
        self._brush_cursor_added = False

    def _scene(self) -> QGraphicsScene:
        scene = self.scene()
        assert scene is not None
        return scene

    def _viewport(self) -> QWidget:
        viewport = self.viewport()
        assert viewport is not None
        return viewport

    # ---- drawing

    @property
    def drawing(self) -> bool:
        """Whether clicks add vertices of a new outline."""
        return self._drawing

    def start_drawing(self) -> None:
        """Clicks add vertices; double-click or Enter closes the outline, Esc cancels."""
        self.stop_brush()
        self._points = []
        self._drawing = True
        self.setDragMode(QGraphicsView.DragMode.NoDrag)
        self._viewport().setCursor(Qt.CursorShape.CrossCursor)
        if not self._rubber_added:
            self._scene().addItem(self._rubber)
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
        self._idle_mode()
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

    # ---- brush

    @property
    def brushing(self) -> bool:
        """Whether mouse drags paint brush strokes."""
        return self._brushing

    def start_brush(self, radius_um: float) -> None:
        """Mouse drags paint (``stroke_moved``) with a round brush of this radius, shown at the cursor."""
        if self._drawing:
            self._stop_drawing()
        self._brushing = True
        self._stroke_last = None
        self.set_brush_radius_um(radius_um)
        self.setDragMode(QGraphicsView.DragMode.NoDrag)
        self._viewport().setCursor(Qt.CursorShape.CrossCursor)
        if not self._brush_cursor_added:
            self._scene().addItem(self._brush_cursor)
            self._brush_cursor_added = True
        self.setMouseTracking(True)

    def stop_brush(self) -> None:
        """Leave brush mode."""
        if not self._brushing:
            return
        self._brushing = False
        if self._stroke_last is not None:
            self._stroke_last = None
            self.stroke_finished.emit()
        self._brush_cursor.setVisible(False)
        self._idle_mode()

    def set_brush_radius_um(self, radius_um: float) -> None:
        """The brush radius (µm), for the cursor circle."""
        self._brush_radius_um = float(radius_um)
        r = self._brush_radius_um
        self._brush_cursor.setRect(QRectF(-r, -r, 2 * r, 2 * r))

    def _idle_mode(self) -> None:
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self._viewport().unsetCursor()

    # ---- mouse and keys

    def mousePressEvent(self, event: QMouseEvent | None) -> None:  # noqa: D102
        if event is not None and self._drawing:
            if event.button() == Qt.MouseButton.LeftButton:
                self._points.append(self.mapToScene(event.position().toPoint()))
                self._update_rubber(None)
            elif event.button() == Qt.MouseButton.RightButton:
                self.cancel_drawing()
            event.accept()
            return
        if event is not None and self._brushing and event.button() == Qt.MouseButton.LeftButton:
            p = self.mapToScene(event.position().toPoint())
            self._stroke_last = p
            self.stroke_moved.emit(p, p)
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
        if event is not None and self._brushing:
            p = self.mapToScene(event.position().toPoint())
            self._brush_cursor.setPos(p)
            self._brush_cursor.setVisible(True)
            if self._stroke_last is not None and event.buttons() & Qt.MouseButton.LeftButton:
                self.stroke_moved.emit(self._stroke_last, p)
                self._stroke_last = p
            event.accept()
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent | None) -> None:  # noqa: D102
        if event is not None and self._brushing and self._stroke_last is not None:
            self._stroke_last = None
            self.stroke_finished.emit()
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def keyPressEvent(self, event: QKeyEvent | None) -> None:  # noqa: D102
        if event is None:
            return
        key = event.key()
        if self._drawing and key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.finish_drawing()
        elif self._drawing and key == Qt.Key.Key_Escape:
            self.cancel_drawing()
        elif self._brushing and key == Qt.Key.Key_Escape:
            self.stop_brush()
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
        self.zoomed.emit()
        event.accept()

    def fit_rect(self, rect: QRectF) -> None:
        """Show a scene rectangle (µm) whole."""
        if rect.isValid() and not rect.isEmpty():
            self.fitInView(rect, Qt.AspectRatioMode.KeepAspectRatio)
