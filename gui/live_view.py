"""One section on screen: mosaic, % axonal area heatmap, region outlines, colour bar, region table.

The live scan view, the results browser and the region editor show a section
the same way, so all use :class:`SectionDisplay`. Turning arrays into
pictures is :func:`gui.section_render.render_section` (pure numpy, run off the
Qt thread); the widgets here only wrap the finished pixels into ``QImage``
objects on a scene whose units are stage micrometres, so the mosaic, the
heatmap bins and the region outlines line up whatever their own pixel sizes.
The view zooms with the wheel and pans by dragging (:class:`~gui.outline_items.OutlineView`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from PyQt6.QtCore import QPointF, QRectF, Qt, pyqtSignal
from PyQt6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QImage,
    QLinearGradient,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
    QResizeEvent,
)
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from analysis.maps import RegionRow

from .outline_items import OutlineView
from .section_render import (
    HEATMAP_COLORMAP,
    HIGHLIGHT_RGBA,
    OUTLINE_COLORS,
    SectionPicture,
    heat_lut,
    heatmap_scale_max,
    outlined_by_default,
    region_label,
    render_section,
)

__all__ = [
    "HEATMAP_COLORMAP",
    "OUTLINE_COLORS",
    "ColorBar",
    "RegionTable",
    "SectionDisplay",
    "SectionPicture",
    "SectionView",
    "heatmap_scale_max",
    "qimage",
    "region_label",
    "render_section",
]

#: Opacity of the heatmap over the mosaic.
HEATMAP_OPACITY = 0.85


def qimage(pixels: NDArray[np.uint8]) -> QImage:
    """A QImage owning a copy of (H, W, 3) RGB or (H, W, 4) RGBA pixels."""
    data = np.ascontiguousarray(pixels)
    h, w, n = data.shape
    fmt = QImage.Format.Format_RGB888 if n == 3 else QImage.Format.Format_RGBA8888
    return QImage(data.tobytes(), w, h, n * w, fmt).copy()


class ColorBar(QWidget):
    """A vertical colour bar of the heatmap colormap from 0 to the scale's top, labelled in %."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._max_pct = 1.0
        lut = heat_lut()
        self._stops = [(i / 255.0, QColor(*(int(v) for v in lut[i]))) for i in range(0, 256, 15)]
        self.setMinimumWidth(78)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Expanding)

    @property
    def max_pct(self) -> float:
        """Top of the scale (%)."""
        return self._max_pct

    def set_max_pct(self, value: float) -> None:
        """Set the top of the scale (%)."""
        self._max_pct = float(value)
        self.update()

    def tick_labels(self) -> list[str]:
        """The labels drawn beside the bar, bottom to top."""
        return [f"{self._max_pct * f:.3g} %" for f in (0.0, 0.25, 0.5, 0.75, 1.0)]

    def paintEvent(self, event: Any) -> None:  # Qt override
        """Draw the gradient, the ticks and the title."""
        p = QPainter(self)
        fm = p.fontMetrics()
        top, bottom = fm.height() + 6, self.height() - fm.height() // 2 - 4
        bar = QRectF(4, top, 14, max(bottom - top, 10))
        grad = QLinearGradient(bar.bottomLeft(), bar.topLeft())
        for pos, color in self._stops:
            grad.setColorAt(pos, color)
        p.fillRect(bar, QBrush(grad))
        p.setPen(self.palette().windowText().color())
        p.drawRect(bar)
        p.drawText(QPointF(2, fm.ascent() + 1), "% axonal")
        for i, text in enumerate(self.tick_labels()):
            y = bar.bottom() - bar.height() * i / 4
            p.drawLine(QPointF(bar.right(), y), QPointF(bar.right() + 4, y))
            p.drawText(QPointF(bar.right() + 7, y + fm.ascent() / 2 - 1), text)
        p.end()


class SectionView(OutlineView):
    """Mosaic, heatmap overlay, region outlines and a scale bar, in stage µm (x right, y down).

    The view keeps the mosaic fitted until the user zooms (wheel); :meth:`fit` fits it again.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(None, parent)
        self.setBackgroundBrush(QColor("black"))
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setMinimumSize(240, 200)
        self.mosaic_item = QGraphicsPixmapItem()
        self.mosaic_item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.heat_item = QGraphicsPixmapItem()
        self.heat_item.setOpacity(HEATMAP_OPACITY)
        self.heat_item.setZValue(1)
        self.highlight_item = QGraphicsPixmapItem()
        self.highlight_item.setZValue(2)
        self.outline_items: list[QGraphicsPathItem] = []
        for item in (self.mosaic_item, self.heat_item, self.highlight_item):
            self.scene().addItem(item)  # type: ignore[union-attr]
        self._extent = QRectF()
        self._auto_fit = True
        self.zoomed.connect(self._user_zoomed)

    def _user_zoomed(self) -> None:
        self._auto_fit = False

    def show_picture(
        self, picture: SectionPicture, *, heat: bool, outlines: bool, all_regions: bool = False
    ) -> None:
        """Show a rendered section; refit the view when the mosaic's extent changed."""
        img = picture.mosaic_rgb
        self.mosaic_item.setPixmap(QPixmap.fromImage(qimage(img)))
        self.mosaic_item.setScale(picture.mosaic_pixel_um)
        self.mosaic_item.setPos(*picture.mosaic_origin_um)
        if picture.heat_rgba is not None:
            self.heat_item.setPixmap(QPixmap.fromImage(qimage(picture.heat_rgba)))
            self.heat_item.setScale(picture.heat_bin_um)
            self.heat_item.setPos(*picture.heat_origin_um)
        else:
            self.heat_item.setPixmap(QPixmap())
        self.heat_item.setVisible(heat)
        scene = self.scene()
        assert scene is not None
        for item in self.outline_items:
            scene.removeItem(item)
        self.outline_items = []
        for name, color, contours in picture.outlines:
            path = QPainterPath()
            for c in contours:
                if len(c) < 2:
                    continue
                path.moveTo(float(c[0, 0]), float(c[0, 1]))
                for x, y in c[1:]:
                    path.lineTo(float(x), float(y))
            item = QGraphicsPathItem(path)
            pen = QPen(QColor(color))
            pen.setCosmetic(True)  # constant width on screen, whatever the zoom
            pen.setWidthF(1.6 if name == "section" else 1.4)
            item.setPen(pen)
            item.setZValue(3)
            item.setVisible(outlines and (all_regions or outlined_by_default(name)))
            item.setData(0, name)
            scene.addItem(item)
            self.outline_items.append(item)
        h, w = img.shape[:2]
        extent = QRectF(
            picture.mosaic_origin_um[0],
            picture.mosaic_origin_um[1],
            w * picture.mosaic_pixel_um,
            h * picture.mosaic_pixel_um,
        )
        if extent != self._extent:
            self._extent = extent
            scene.setSceneRect(extent)
            self.fit()

    def set_outlines_visible(self, outlines: bool, *, all_regions: bool = False) -> None:
        """Show the outlines (``all_regions``: of every region, else of the usual ones)."""
        for item in self.outline_items:
            item.setVisible(outlines and (all_regions or outlined_by_default(str(item.data(0)))))

    def set_highlight(self, picture: SectionPicture | None, region: str | None) -> None:
        """Fill one region's mask (None: no highlight)."""
        if picture is None or region is None or region not in picture.masks:
            self.highlight_item.setPixmap(QPixmap())
            return
        mask = picture.masks[region]
        rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
        rgba[mask] = HIGHLIGHT_RGBA
        self.highlight_item.setPixmap(QPixmap.fromImage(qimage(rgba)))
        self.highlight_item.setScale(picture.mask_pixel_um)
        self.highlight_item.setPos(*picture.mask_origin_um)

    def clear_picture(self) -> None:
        """Show nothing."""
        for pixmap_item in (self.mosaic_item, self.heat_item, self.highlight_item):
            pixmap_item.setPixmap(QPixmap())
        scene = self.scene()
        assert scene is not None
        for item in self.outline_items:
            scene.removeItem(item)
        self.outline_items = []
        self._extent = QRectF()

    def fit(self) -> None:
        """Fit the mosaic into the view (and keep it fitted until the next zoom)."""
        self._auto_fit = True
        if not self._extent.isEmpty():
            self.fit_rect(self._extent)

    def resizeEvent(self, event: QResizeEvent | None) -> None:  # Qt override
        """Keep the mosaic fitted unless the user zoomed."""
        super().resizeEvent(event)
        if self._auto_fit:
            self.fit()

    def drawForeground(self, painter: QPainter | None, rect: QRectF) -> None:  # Qt override
        """A scale bar in the lower left corner."""
        if painter is None or self._extent.isEmpty():
            return
        um_per_px = 1.0 / max(self.transform().m11(), 1e-9)
        target_um = 120 * um_per_px
        exponent = math.floor(math.log10(target_um))
        bar_um = max(s * 10.0**exponent for s in (1, 2, 5) if s * 10.0**exponent <= target_um)
        painter.save()
        painter.resetTransform()
        x0, y0 = 12.0, self.viewport().height() - 14.0  # type: ignore[union-attr]
        length = bar_um / um_per_px
        pen = QPen(QColor("white"))
        pen.setWidth(3)
        painter.setPen(pen)
        painter.drawLine(QPointF(x0, y0), QPointF(x0 + length, y0))
        font = QFont(painter.font())
        font.setBold(True)
        painter.setFont(font)
        label = f"{bar_um / 1000:g} mm" if bar_um >= 1000 else f"{bar_um:g} µm"
        painter.drawText(QPointF(x0, y0 - 6), label)
        painter.restore()


class RegionTable(QTableWidget):
    """The region table of one section: % axonal area, mean tracer, areas, imaged fraction."""

    COLUMNS = (
        "Region",
        "Kind",
        "% axonal area",
        "Mean tracer (ADU)",
        "Area (mm²)",
        "Axon area (µm²)",
        "Imaged (%)",
    )
    #: What each region kind means (the Kind column's tooltips).
    KIND_TIPS: ClassVar[dict[str, str]] = {
        "automatic": "found by CordScope's rules from the DAPI mosaic",
        "edited": "an outline moved or painted by hand",
        "drawn": "drawn by hand (here, or as a polygon in the plan)",
        "imported": "read from a GeoJSON file (e.g. edited in QuPath)",
    }

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(self.COLUMNS), parent)
        self.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        vertical = self.verticalHeader()
        assert vertical is not None
        vertical.setVisible(False)
        vertical.setDefaultSectionSize(self.fontMetrics().height() + 8)
        header = self.horizontalHeader()
        assert header is not None
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for i in range(1, len(self.COLUMNS)):
            header.setSectionResizeMode(i, QHeaderView.ResizeMode.ResizeToContents)
        self._regions: list[str] = []

    def set_rows(self, rows: Sequence[RegionRow], *, unsaved: Mapping[str, str] | None = None) -> None:
        """Show these rows, keeping the selected region selected.

        ``unsaved`` maps regions changed but not re-analysed yet to their coming kind, shown as
        ``"edited (not saved)"``; their numbers are still those of the rows.
        """
        selected = self.selected_region()
        pending = dict(unsaved or {})
        self.blockSignals(True)
        try:
            self.setRowCount(len(rows))
            self._regions = [r.region for r in rows]
            for i, r in enumerate(rows):
                kind = f"{pending[r.region]} (not saved)" if r.region in pending else r.kind
                values = (
                    region_label(r.region),
                    kind,
                    _num(r.pct_axonal_area, "{:.3f}"),
                    _num(r.mean_tracer_intensity, "{:.1f}"),
                    _num(r.area_um2 / 1e6, "{:.3f}"),
                    _num(r.axon_area_um2, "{:,.0f}"),
                    _num(100 * r.imaged_fraction, "{:.0f}"),
                )
                for j, text in enumerate(values):
                    item = QTableWidgetItem(text)
                    if j > 1:
                        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    elif j == 1:
                        item.setToolTip(self.KIND_TIPS.get(pending.get(r.region, r.kind), ""))
                        if r.region in pending:
                            font = item.font()
                            font.setItalic(True)
                            item.setFont(font)
                    item.setData(Qt.ItemDataRole.UserRole, r.region)
                    self.setItem(i, j, item)
            if selected in self._regions:
                self.selectRow(self._regions.index(selected))
        finally:
            self.blockSignals(False)

    def regions(self) -> list[str]:
        """Region names of the rows, in order."""
        return list(self._regions)

    def selected_region(self) -> str | None:
        """The region of the selected row, if any."""
        rows = {i.row() for i in self.selectedIndexes()}
        if len(rows) != 1:
            return None
        row = rows.pop()
        return self._regions[row] if 0 <= row < len(self._regions) else None

    def cell_text(self, region: str, column: str) -> str:
        """Text shown for one region and column (e.g. ``"% axonal area"``)."""
        item = self.item(self._regions.index(region), self.COLUMNS.index(column))
        return item.text() if item is not None else ""


def _num(value: float, fmt: str) -> str:
    return "–" if value is None or not math.isfinite(value) else fmt.format(value)


class SectionDisplay(QWidget):
    """A section's picture (mosaic + toggleable heatmap + outlines + colour bar) above its region table.

    Selecting a row of the table fills that region on the picture.
    """

    #: The region selected in the table ("" when none is).
    region_selected = pyqtSignal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = SectionView()
        self.color_bar = ColorBar()
        self.heatmap_toggle = QCheckBox("% axonal area heatmap")
        self.heatmap_toggle.setChecked(True)
        self.heatmap_toggle.setToolTip("Overlay the % axonal area per bin on the mosaic")
        self.outline_toggle = QCheckBox("Region outlines")
        self.outline_toggle.setChecked(True)
        self.outline_toggle.setToolTip(
            "Outline the section (white), gray matter (cyan), rubrospinal territory (yellow), "
            "rostro-caudal bins (green)"
        )
        self.all_outlines_toggle = QCheckBox("every region")
        self.all_outlines_toggle.setToolTip("Outline every region of the table, each in its colour")
        self.fit_button = QPushButton("Fit")
        self.fit_button.setToolTip("Show the whole section (the wheel zooms, dragging pans)")
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        self.table = RegionTable()
        self.picture: SectionPicture | None = None

        legend = QLabel(
            "<span style='color:#888'>outlines:</span> <b style='color:#9e9e9e'>section</b> · "
            f"<b style='color:{OUTLINE_COLORS['gray_matter']}'>gray matter</b> · "
            f"<b style='color:#c7a500'>rubrospinal territory</b>"
        )
        toggles = QHBoxLayout()
        toggles.addWidget(self.heatmap_toggle)
        toggles.addWidget(self.outline_toggle)
        toggles.addWidget(self.all_outlines_toggle)
        toggles.addStretch(1)
        toggles.addWidget(legend)
        toggles.addWidget(self.fit_button)

        picture_row = QHBoxLayout()
        picture_row.setContentsMargins(0, 0, 0, 0)
        picture_row.addWidget(self.view, 1)
        picture_row.addWidget(self.color_bar)
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addLayout(toggles)
        top_layout.addLayout(picture_row, 1)
        top_layout.addWidget(self.caption)
        #: the picture's column (toggles, picture, caption): tools go in here
        self.top_layout = top_layout

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(self.table)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        self.splitter = splitter
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

        self.heatmap_toggle.toggled.connect(self._on_heat_toggled)
        self.outline_toggle.toggled.connect(self._on_outlines_toggled)
        self.all_outlines_toggle.toggled.connect(self._on_outlines_toggled)
        self.fit_button.clicked.connect(self.view.fit)
        self.table.itemSelectionChanged.connect(self._on_region_selected)

    def show_picture(self, picture: SectionPicture) -> None:
        """Show a rendered section and its region table."""
        self.picture = picture
        self.view.show_picture(
            picture,
            heat=self.heatmap_toggle.isChecked(),
            outlines=self.outline_toggle.isChecked(),
            all_regions=self.all_outlines_toggle.isChecked(),
        )
        self.color_bar.set_max_pct(picture.heat_max_pct)
        self.color_bar.setVisible(self.heatmap_toggle.isChecked() and picture.heat_rgba is not None)
        self.caption.setText(picture.caption)
        self.table.set_rows(picture.table, unsaved=self.unsaved_kinds())
        self.view.set_highlight(picture, self.table.selected_region())

    def unsaved_kinds(self) -> dict[str, str]:
        """Regions changed but not saved, with their coming kind (none here; the region editor has some)."""
        return {}

    def clear(self) -> None:
        """Show nothing."""
        self.picture = None
        self.view.clear_picture()
        self.table.set_rows([])
        self.caption.setText("")

    def _on_heat_toggled(self, on: bool) -> None:
        self.view.heat_item.setVisible(on)
        self.color_bar.setVisible(on and self.picture is not None and self.picture.heat_rgba is not None)

    def _on_outlines_toggled(self, *_: Any) -> None:
        self.view.set_outlines_visible(
            self.outline_toggle.isChecked(), all_regions=self.all_outlines_toggle.isChecked()
        )

    def _on_region_selected(self) -> None:
        region = self.table.selected_region()
        self.view.set_highlight(self.picture, region)
        self.region_selected.emit(region or "")
