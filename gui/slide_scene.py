"""The Slide tab's picture: the overview in stage µm with the section outlines over it.

:class:`SectionItem` is one section's outline (an
:class:`~gui.outline_items.EditablePolygonItem`: its vertices can be dragged
while it is selected); :class:`SlideView` shows the scene, zooms, pans and
draws new outlines (:class:`~gui.outline_items.OutlineView`).
:func:`prepare_overview` turns an overview into screen pixels off the Qt
thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PyQt6.QtGui import QBrush, QColor, QImage, QPainter
from PyQt6.QtWidgets import (
    QGraphicsItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QStyleOptionGraphicsItem,
    QWidget,
)

from acquisition.overview import Overview

from .outline_items import EditablePolygonItem, OutlineView, cosmetic_pen
from .section_table import Section

__all__ = ["SectionItem", "ShownOverview", "SlideView", "display_image", "prepare_overview"]

FOUND_COLOUR = QColor(0, 200, 255)
HAND_COLOUR = QColor(255, 210, 0)
SELECTED_COLOUR = QColor(255, 90, 40)


class SectionItem(EditablePolygonItem):
    """The outline of one section over the overview; vertices draggable when selected.

    Parameters
    ----------
    section : Section
    on_edited : callable
        Called with this item whenever the user moves one of its vertices.
    """

    def __init__(self, section: Section, on_edited: Callable[[SectionItem], None]) -> None:
        super().__init__(section.polygon_um)
        self._on_edited = on_edited
        self.section_id = section.id
        self._source = section.source
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIsSelectable)
        self.setAcceptHoverEvents(True)
        self.setZValue(1)
        self.label = QGraphicsSimpleTextItem(section.id, self)
        self.label.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
        self.label.setBrush(QBrush(QColor(255, 255, 255)))
        self.label.setZValue(5)
        self._restyle()
        self._place_label()

    def set_section(self, section: Section) -> None:
        """Follow the model: outline, id and source."""
        self.section_id = section.id
        self._source = section.source
        self.label.setText(section.id)
        self.set_vertices(section.polygon_um)
        self._restyle()
        self._place_label()

    def outline_edited(self, index: int) -> None:
        """A vertex was dragged: tell the panel (which writes it into the model)."""
        self._on_edited(self)

    def drag_finished(self) -> None:
        """The user let go of a handle."""
        self._place_label()

    def itemChange(self, change: QGraphicsItem.GraphicsItemChange, value: Any) -> Any:  # noqa: D102
        if change == QGraphicsItem.GraphicsItemChange.ItemSelectedHasChanged:
            self.show_handles(self.isSelected())
            self._restyle()
        return super().itemChange(change, value)

    def _restyle(self) -> None:
        colour = HAND_COLOUR if self._source in ("drawn", "edited", "plan") else FOUND_COLOUR
        if self.isSelected():
            self.setPen(cosmetic_pen(SELECTED_COLOUR, 3.0))
            fill = QColor(SELECTED_COLOUR)
            fill.setAlpha(22)
        else:
            self.setPen(cosmetic_pen(colour, 2.0))
            fill = QColor(colour)
            fill.setAlpha(18)
        self.setBrush(QBrush(fill))

    def _place_label(self) -> None:
        r = self.polygon().boundingRect()
        self.label.setPos(r.left(), r.top())

    def paint(  # noqa: D102
        self, painter: QPainter | None, option: QStyleOptionGraphicsItem | None, widget: Any = None
    ) -> None:
        # no dashed selection rectangle: the colour shows the selection
        if option is not None:
            from PyQt6.QtWidgets import QStyle

            option.state &= ~QStyle.StateFlag.State_Selected
        super().paint(painter, option, widget)


class SlideView(OutlineView):
    """The overview and outlines; wheel zooms, drag pans, and draws outlines in "add" mode.

    Signals (from :class:`~gui.outline_items.OutlineView`)
    -------------------------------------------------------
    polygon_drawn(object), drawing_changed(bool), delete_pressed()
    """

    def __init__(self, scene: QGraphicsScene, parent: QWidget | None = None) -> None:
        super().__init__(scene, parent)
        self.setBackgroundBrush(QBrush(QColor(30, 30, 30)))


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
class ShownOverview:
    """An overview with its screen image (made off the Qt thread)."""

    overview: Overview
    image: QImage


def prepare_overview(overview: Overview) -> ShownOverview:
    """The overview's screen image (pure: run it off the Qt thread)."""
    return ShownOverview(overview, display_image(overview.image))
