"""One section on screen: mosaic, % axonal area heatmap, region outlines, colour bar, region table.

The live scan view and the results browser show a section the same way, so
both use :class:`SectionDisplay`. Turning arrays into pictures (contrast,
colour lookup, contour tracing) is done by :func:`render_section`, a pure
numpy function that a caller runs off the Qt thread; the widget only wraps
the finished pixels into ``QImage`` objects and places them on a scene whose
units are stage micrometres, so the mosaic, the heatmap bins and the region
outlines line up whatever their own pixel sizes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

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
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSizePolicy,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from analysis.figures import CHANNEL_COLORS
from analysis.maps import RegionRow

__all__ = [
    "HEATMAP_COLORMAP",
    "OUTLINE_COLORS",
    "ColorBar",
    "RegionTable",
    "SectionDisplay",
    "SectionPicture",
    "SectionView",
    "heatmap_scale_max",
    "region_label",
    "render_section",
]

#: matplotlib colormap of the % axonal area heatmap (as in the saved PNG figures).
HEATMAP_COLORMAP = "magma"
#: Opacity of the heatmap over the mosaic.
HEATMAP_OPACITY = 0.85
#: Regions outlined on the mosaic, with their outline colour; ``rc_*`` bins of
#: horizontal sections are drawn in :data:`BIN_OUTLINE_COLOR`.
OUTLINE_COLORS: dict[str, str] = {
    "section": "#ffffff",
    "gray_matter": "#4dd0e1",
    "rubrospinal_territory": "#ffd600",
}
BIN_OUTLINE_COLOR = "#9ccc65"
#: Fill colour of the region selected in the region table.
HIGHLIGHT_RGBA = (0, 230, 118, 110)

Contour = NDArray[np.float64]


def region_label(name: str) -> str:
    """A region name for people: ``"rubrospinal_territory"`` → ``"rubrospinal territory"``.

    Rostro-caudal bins ``rc_<a>_<b>`` read ``"rostro-caudal a…b µm"``.
    """
    if name.startswith("rc_"):
        parts = name[3:].split("_")
        if len(parts) == 2:
            return f"rostro-caudal {parts[0]}…{parts[1]} µm"
    return name.replace("_", " ")


def heatmap_scale_max(pct_axonal_area: NDArray[Any]) -> float:
    """Top of the heatmap colour scale (%): the map's 99th percentile rounded up to 1, 2 or 5 × 10ⁿ.

    At least 0.1 %, so an almost empty section does not turn noise into full colour.
    """
    finite = np.asarray(pct_axonal_area, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    top = float(np.percentile(finite, 99)) if finite.size else 0.0
    top = max(top, 0.1)
    exponent = math.floor(math.log10(top))
    for step in (1.0, 2.0, 5.0, 10.0):
        nice = step * 10.0**exponent
        if nice >= top * (1 - 1e-9):
            return float(nice)
    return float(10.0 ** (exponent + 1))


def _colormap_lut(name: str) -> NDArray[np.uint8]:
    from matplotlib import colormaps

    lut = colormaps[name](np.linspace(0.0, 1.0, 256))
    return (lut * 255 + 0.5).astype(np.uint8)


_LUT: NDArray[np.uint8] | None = None


def _heat_lut() -> NDArray[np.uint8]:
    global _LUT
    if _LUT is None:
        _LUT = _colormap_lut(HEATMAP_COLORMAP)
    return _LUT


def _channel_color(name: str, fallback: tuple[float, float, float]) -> NDArray[np.float32]:
    return np.asarray(CHANNEL_COLORS.get(name, fallback), dtype=np.float32)


def _scaled(image: NDArray[Any], low_pct: float, high_pct: float) -> NDArray[np.float32]:
    """Image scaled to 0..1 between two percentiles of its finite values; NaN → 0."""
    a = np.asarray(image, dtype=np.float32)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(finite, [low_pct, high_pct]))
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    out[~np.isfinite(out)] = 0.0
    return out.astype(np.float32, copy=False)


def composite(
    anatomy: NDArray[Any] | None,
    tracer: NDArray[Any] | None,
    *,
    anatomy_name: str = "DAPI",
    tracer_name: str = "tdTomato",
) -> NDArray[np.uint8]:
    """Anatomy (its usual colour, DAPI blue) plus tracer (tdTomato red) as one RGB image.

    Parameters
    ----------
    anatomy, tracer : (H, W) float arrays, NaN where not imaged (either may be None)

    Returns
    -------
    (H, W, 3) uint8; black where nothing is imaged.
    """
    shape = next(a.shape for a in (anatomy, tracer) if a is not None)
    rgb = np.zeros((*shape, 3), dtype=np.float32)
    if anatomy is not None:
        # the counterstain is lifted toward grey and brightened (gamma) so tissue reads at a glance
        # and red axons still stand out on it
        color = 0.6 * _channel_color(anatomy_name, (0.25, 0.45, 1.0)) + 0.3
        rgb += np.sqrt(_scaled(anatomy, 1.0, 99.0))[..., None] * color
    if tracer is not None:
        rgb += _scaled(tracer, 50.0, 99.9)[..., None] * _channel_color(tracer_name, (1.0, 0.25, 0.2))
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def heatmap_rgba(pct_axonal_area: NDArray[Any], scale_max_pct: float) -> NDArray[np.uint8]:
    """Colour each bin by the heatmap colormap (0 … ``scale_max_pct``); NaN bins transparent.

    Opacity grows with the value (30 % at 0), so the tissue shows through where there is little tracer.
    """
    pct = np.asarray(pct_axonal_area, dtype=np.float64)
    finite = np.isfinite(pct)
    index = np.zeros(pct.shape, dtype=np.intp)
    index[finite] = np.clip(np.round(pct[finite] / scale_max_pct * 255), 0, 255).astype(np.intp)
    rgba = _heat_lut()[index].copy()
    # low values are more transparent, so the tissue shows where there is little tracer
    alpha = 0.3 + 0.7 * np.clip(index / 255.0, 0.0, 1.0) ** 0.5
    rgba[..., 3] = np.where(finite, np.round(255 * alpha), 0).astype(np.uint8)
    return rgba


def _contours_um(mask: NDArray[np.bool_], origin_um: Sequence[float], pixel_um: float) -> list[Contour]:
    from skimage.measure import find_contours

    if not mask.any():
        return []
    # pad so regions touching the border close; pixel (r, c) is centred at origin + (c + 0.5, r + 0.5) · P
    padded = np.pad(mask.astype(np.uint8), 1)
    out = []
    for c in find_contours(padded, 0.5):
        xy = np.empty_like(c)
        xy[:, 0] = origin_um[0] + (c[:, 1] - 1 + 0.5) * pixel_um
        xy[:, 1] = origin_um[1] + (c[:, 0] - 1 + 0.5) * pixel_um
        out.append(xy)
    return out


@dataclasses.dataclass(frozen=True)
class SectionPicture:
    """A section rendered for the screen (built off the Qt thread by :func:`render_section`).

    Attributes
    ----------
    section_id : str
    caption : str
        One line under the picture (tiles analysed, labels).
    mosaic_rgb : (H, W, 3) uint8
    mosaic_origin_um : (x, y) of the mosaic's top-left corner
    mosaic_pixel_um : float
    heat_rgba : (ny, nx, 4) uint8 or None
    heat_origin_um : (x, y)
    heat_bin_um : float
    heat_max_pct : float
        Top of the colour scale (%).
    outlines : list of (region name, colour, contours in stage µm)
    masks : dict of region name → bool mask on the mask grid
    mask_origin_um, mask_pixel_um : the mask grid
    table : list of RegionRow
    n_tiles_analysed, n_tiles : int
        Tiles the picture is made of, and the section's tiles (0: not known).
    """

    section_id: str
    caption: str
    mosaic_rgb: NDArray[np.uint8]
    mosaic_origin_um: tuple[float, float]
    mosaic_pixel_um: float
    heat_rgba: NDArray[np.uint8] | None
    heat_origin_um: tuple[float, float]
    heat_bin_um: float
    heat_max_pct: float
    outlines: list[tuple[str, str, list[Contour]]]
    masks: dict[str, NDArray[np.bool_]]
    mask_origin_um: tuple[float, float]
    mask_pixel_um: float
    table: list[RegionRow]
    n_tiles_analysed: int = 0
    n_tiles: int = 0


def render_section(
    *,
    section_id: str,
    anatomy: NDArray[Any] | None,
    tracer: NDArray[Any] | None,
    mosaic_origin_um: Sequence[float],
    mosaic_pixel_um: float,
    pct_axonal_area: NDArray[Any] | None,
    map_origin_um: Sequence[float],
    map_bin_um: float,
    masks: Mapping[str, NDArray[Any]] | None,
    mask_origin_um: Sequence[float] | None = None,
    mask_pixel_um: float | None = None,
    table: Sequence[RegionRow] = (),
    caption: str = "",
    anatomy_name: str = "DAPI",
    tracer_name: str = "tdTomato",
    heat_max_pct: float | None = None,
    n_tiles_analysed: int = 0,
    n_tiles: int = 0,
) -> SectionPicture:
    """Turn a section's arrays into screen pixels and outlines (pure numpy: run it off the Qt thread).

    Parameters
    ----------
    anatomy, tracer : (H, W) float, NaN where not imaged
        Reduced mosaics of the anatomy and tracer channels.
    mosaic_origin_um, mosaic_pixel_um :
        Stage (x, y) of the mosaic's top-left corner (µm) and its pixel size (µm).
    pct_axonal_area : (ny, nx) float or None
        % axonal area per bin, NaN outside imaged tissue.
    map_origin_um, map_bin_um :
        The heatmap's top-left corner and bin size (µm).
    masks : mapping of region name → bool (rows, cols), or None
        Region masks; by default on the mosaic grid.
    mask_origin_um, mask_pixel_um :
        The masks' grid if it differs from the mosaic's.
    table : region rows shown beside the picture
    caption : str
    heat_max_pct : float, optional
        Top of the colour scale; default :func:`heatmap_scale_max` of the map.
    n_tiles_analysed, n_tiles : int
        Kept with the picture (how complete it is).
    """
    mosaic = composite(anatomy, tracer, anatomy_name=anatomy_name, tracer_name=tracer_name)
    heat = None
    top = 1.0
    if pct_axonal_area is not None and np.isfinite(pct_axonal_area).any():
        top = heat_max_pct if heat_max_pct is not None else heatmap_scale_max(pct_axonal_area)
        heat = heatmap_rgba(pct_axonal_area, top)
    m_origin = tuple(mask_origin_um) if mask_origin_um is not None else tuple(mosaic_origin_um)
    m_pixel = float(mask_pixel_um) if mask_pixel_um is not None else float(mosaic_pixel_um)
    bool_masks = {str(k): np.asarray(v, dtype=bool) for k, v in (masks or {}).items()}
    outlines: list[tuple[str, str, list[Contour]]] = []
    for name, mask in bool_masks.items():
        color = OUTLINE_COLORS.get(name, BIN_OUTLINE_COLOR if name.startswith("rc_") else "")
        if color:
            outlines.append((name, color, _contours_um(mask, m_origin, m_pixel)))
    return SectionPicture(
        section_id=section_id,
        caption=caption,
        mosaic_rgb=mosaic,
        mosaic_origin_um=(float(mosaic_origin_um[0]), float(mosaic_origin_um[1])),
        mosaic_pixel_um=float(mosaic_pixel_um),
        heat_rgba=heat,
        heat_origin_um=(float(map_origin_um[0]), float(map_origin_um[1])),
        heat_bin_um=float(map_bin_um),
        heat_max_pct=float(top),
        outlines=outlines,
        masks=bool_masks,
        mask_origin_um=(float(m_origin[0]), float(m_origin[1])),
        mask_pixel_um=m_pixel,
        table=list(table),
        n_tiles_analysed=int(n_tiles_analysed),
        n_tiles=int(n_tiles),
    )


def _qimage(pixels: NDArray[np.uint8]) -> QImage:
    """A QImage owning a copy of (H, W, 3) RGB or (H, W, 4) RGBA pixels."""
    data = np.ascontiguousarray(pixels)
    h, w, n = data.shape
    fmt = QImage.Format.Format_RGB888 if n == 3 else QImage.Format.Format_RGBA8888
    return QImage(data.tobytes(), w, h, n * w, fmt).copy()


# ===================================================================== widgets


class ColorBar(QWidget):
    """A vertical colour bar of the heatmap colormap from 0 to the scale's top, labelled in %."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._max_pct = 1.0
        lut = _heat_lut()
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


class SectionView(QGraphicsView):
    """Mosaic, heatmap overlay, region outlines and a scale bar, in stage µm (x right, y down)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setBackgroundBrush(QColor("black"))
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        self.setRenderHint(QPainter.RenderHint.Antialiasing, True)
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

    def show_picture(self, picture: SectionPicture, *, heat: bool, outlines: bool) -> None:
        """Show a rendered section; refit the view when the mosaic's extent changed."""
        img = picture.mosaic_rgb
        self.mosaic_item.setPixmap(QPixmap.fromImage(_qimage(img)))
        self.mosaic_item.setScale(picture.mosaic_pixel_um)
        self.mosaic_item.setPos(*picture.mosaic_origin_um)
        if picture.heat_rgba is not None:
            self.heat_item.setPixmap(QPixmap.fromImage(_qimage(picture.heat_rgba)))
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
            item.setVisible(outlines)
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

    def set_highlight(self, picture: SectionPicture | None, region: str | None) -> None:
        """Fill one region's mask (None: no highlight)."""
        if picture is None or region is None or region not in picture.masks:
            self.highlight_item.setPixmap(QPixmap())
            return
        mask = picture.masks[region]
        rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
        rgba[mask] = HIGHLIGHT_RGBA
        self.highlight_item.setPixmap(QPixmap.fromImage(_qimage(rgba)))
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
        """Fit the mosaic into the view."""
        if not self._extent.isEmpty():
            self.fitInView(self._extent, Qt.AspectRatioMode.KeepAspectRatio)

    def resizeEvent(self, event: QResizeEvent | None) -> None:  # Qt override
        """Keep the mosaic fitted."""
        super().resizeEvent(event)
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

    COLUMNS = ("Region", "% axonal area", "Mean tracer (ADU)", "Area (mm²)", "Axon area (µm²)", "Imaged (%)")

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

    def set_rows(self, rows: Sequence[RegionRow]) -> None:
        """Show these rows, keeping the selected region selected."""
        selected = self.selected_region()
        self.blockSignals(True)
        try:
            self.setRowCount(len(rows))
            self._regions = [r.region for r in rows]
            for i, r in enumerate(rows):
                values = (
                    region_label(r.region),
                    _num(r.pct_axonal_area, "{:.3f}"),
                    _num(r.mean_tracer_intensity, "{:.1f}"),
                    _num(r.area_um2 / 1e6, "{:.3f}"),
                    _num(r.axon_area_um2, "{:,.0f}"),
                    _num(100 * r.imaged_fraction, "{:.0f}"),
                )
                for j, text in enumerate(values):
                    item = QTableWidgetItem(text)
                    if j:
                        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
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
        toggles.addStretch(1)
        toggles.addWidget(legend)

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
        self.table.itemSelectionChanged.connect(self._on_region_selected)

    def show_picture(self, picture: SectionPicture) -> None:
        """Show a rendered section and its region table."""
        self.picture = picture
        self.view.show_picture(
            picture, heat=self.heatmap_toggle.isChecked(), outlines=self.outline_toggle.isChecked()
        )
        self.color_bar.set_max_pct(picture.heat_max_pct)
        self.color_bar.setVisible(self.heatmap_toggle.isChecked() and picture.heat_rgba is not None)
        self.caption.setText(picture.caption)
        self.table.set_rows(picture.table)
        self.view.set_highlight(picture, self.table.selected_region())

    def clear(self) -> None:
        """Show nothing."""
        self.picture = None
        self.view.clear_picture()
        self.table.set_rows([])
        self.caption.setText("")

    def _on_heat_toggled(self, on: bool) -> None:
        self.view.heat_item.setVisible(on)
        self.color_bar.setVisible(on and self.picture is not None and self.picture.heat_rgba is not None)

    def _on_outlines_toggled(self, on: bool) -> None:
        for item in self.view.outline_items:
            item.setVisible(on)

    def _on_region_selected(self) -> None:
        region = self.table.selected_region()
        self.view.set_highlight(self.picture, region)
        if region is not None:
            self.region_selected.emit(region)
