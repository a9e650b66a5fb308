"""Find the tissue sections on a slide overview image.

The overview (``acquisition.overview``) is a low-resolution (≈ 8 µm pixels)
image of the slide in the anatomy channel: sections are faint tissue
autofluorescence dotted with bright nuclei; glass is the camera's dark
offset plus noise. :func:`find_sections` turns it into one polygon per
section, in stage µm, numbered in slide order, ready for a scan plan.

Method
------
1. **Glass level and noise.** The glass is the narrowest and most populated
   intensity peak of a slide overview (tissue is textured and spread over a
   wide range), so the background is the histogram mode, refined as the
   median of the pixels within ±4 σ of it, and σ is the MAD of those pixels.
   It is subtracted implicitly: every later step compares with it.
2. **Smoothing.** A Gaussian of ``smoothing_um`` (default 25 µm ≈ 3
   pixels) averages nuclei and tissue texture into a continuous tissue
   signal and cuts the glass noise about tenfold.
3. **Automatic threshold: triangle** (Zack 1977, ``skimage``) on the
   smoothed image. Its histogram is one tall, narrow glass peak with a long
   tail of tissue (white matter, gray matter, nuclei): the triangle method
   puts the threshold at the foot of that peak, so it keeps dim white
   matter at the section's edge and does not move with how much of the
   slide is tissue. Otsu assumes two classes of comparable weight: here,
   with tissue ~15 % of the area and bright nuclei stretching it, it lands
   inside the tissue range (≈ 165 ADU against ≈ 101 for the triangle on
   the demo slide) and would cut away the faint edge. The threshold is
   never below the glass level + 5 σ (smoothed), so a bare-glass region,
   whose histogram has no tail, finds nothing.
4. **Clean-up.** Binary closing (a ``2r+1`` square, ``r = closing_um``)
   bridges cracks and tile seams; holes are filled, so the central canal
   and a lesion cavity neither split nor puncture a section; components
   whose filled area is below ``min_area_um2`` (dust, debris, specks) are
   dropped, as are components lying inside a larger section's filled area.
5. **Edges that hug the tissue.** The threshold of step 3 sits at the foot
   of the glass peak, so the smoothed tissue crosses it some 2σ of the
   smoothing outside the true edge (≈ 50 µm on the demo slide). Per section,
   the edge is therefore found again at *half* the tissue level near the
   edge (the median of the smoothed image 3–6 σ inside the first mask):
   smoothing turns a step into an edge that crosses half its height at the
   step, so this mask follows the true edge within a pixel or two. It is
   closed and filled as in step 4 and kept within the first mask.
6. **Polygons.** One per component: the outer iso-line at distance
   ``dilation_um`` from the component's pixel boundary (a
   ``skimage.measure.find_contours`` contour of its Euclidean distance
   map, i.e. a mask dilation by a disc with sub-pixel precision), simplified
   with ``skimage.measure.approximate_polygon`` (tolerance
   ``simplify_um``, default one pixel), converted to stage µm.
7. **Slide order.** Sections are grouped into rows by their centroid y
   (a new row starts where consecutive centroids, sorted by y, are more
   than half the median section height apart); rows run top (small y) to
   bottom, sections left to right within a row; numbering starts at 1.

Expensive steps (smoothing, closing, hole filling, distance maps) run only on
crops around candidate sections, found first on an image block-averaged to
about the smoothing scale; the statistics of step 1 and the threshold come
from that coarse image too.

Coordinates
-----------
Pixel ``(r, c)`` of the image covers stage x ∈ ``[ox + c·P, ox + (c+1)·P)``,
y ∈ ``[oy + r·P, oy + (r+1)·P)`` with ``(ox, oy) = origin_um``,
``P = pixel_size_um``: rows go with +y, columns with +x.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi
from skimage.filters import threshold_triangle
from skimage.measure import approximate_polygon, find_contours

__all__ = [
    "DEFAULT_MARGIN_UM",
    "FoundSection",
    "TissueMask",
    "find_sections",
    "order_in_slide_rows",
    "segment_tissue",
]

logger = logging.getLogger(__name__)

_NOISE_FLOOR_SIGMAS = 5.0
_CLIP_PERCENTILE = 99.9
_MAX_STAT_SAMPLES = 1 << 19  # bright junk (dust, saturated debris) must not stretch the histogram

F64 = NDArray[np.float64]


# ==================================================================== results


@dataclass(frozen=True, eq=False)
class FoundSection:
    """One section found on an overview.

    Attributes
    ----------
    index : int
        Position in slide order, starting at 1 (rows top to bottom, left to
        right within a row).
    polygon_um : (N, 2) float64 array
        Vertices (x, y) in stage µm of the dilated, simplified outline; the
        first vertex is not repeated; positive shoelace area in (x, y).
    centroid_um : (float, float)
        Area centroid of ``polygon_um`` (µm).
    area_um2 : float
        Area of ``polygon_um`` (µm²).
    bbox_um : (xmin, ymin, xmax, ymax)
        Bounding box of ``polygon_um`` (µm).
    tissue_area_um2 : float
        Area of the section's tissue mask before dilation, holes filled (µm²).
    """

    index: int
    polygon_um: F64
    centroid_um: tuple[float, float]
    area_um2: float
    bbox_um: tuple[float, float, float, float]
    tissue_area_um2: float


@dataclass(frozen=True, eq=False)
class TissueMask:
    """Sections segmented on an overview, before polygons.

    Attributes
    ----------
    labels : (H, W) int32 array
        0 = glass; k > 0 = the k-th section found (closed, holes filled),
        in no particular order.
    boxes : tuple of (slice, slice)
        ``boxes[k - 1]`` is the (rows, cols) bounding box of section k.
    threshold : float
        Threshold applied to the smoothed image (image units, e.g. ADU).
    background : float
        Glass level (image units).
    noise : float
        Standard deviation of the smoothed glass (image units).
    """

    labels: NDArray[np.int32]
    boxes: tuple[tuple[slice, slice], ...]
    threshold: float
    background: float
    noise: float

    @property
    def n_sections(self) -> int:
        """Number of sections in ``labels``."""
        return len(self.boxes)

    def section_mask(self, k: int) -> NDArray[np.bool_]:
        """Mask of section ``k`` (1-based) within its box ``boxes[k - 1]``."""
        return self.labels[self.boxes[k - 1]] == k


# ============================================================== segmentation


def _block_mean(image: NDArray[np.float32], q: int) -> NDArray[np.float32]:
    h, w = (image.shape[0] // q) * q, (image.shape[1] // q) * q
    if q == 1 or h == 0 or w == 0:
        return image
    sums = np.add.reduceat(image[:h, :w], np.arange(0, w, q), axis=1, dtype=np.float32)
    sums = np.add.reduceat(sums, np.arange(0, h, q), axis=0)
    sums *= np.float32(1.0 / (q * q))
    return sums


def _glass_level(values: NDArray[np.float32]) -> tuple[float, float]:
    """Glass level and noise SD from the dominant histogram peak."""
    lo, hi = np.percentile(values, [0.5, _CLIP_PERCENTILE])
    if hi <= lo:
        return float(lo), 0.0
    hist, edges = np.histogram(values, bins=512, range=(float(lo), float(hi)))
    k = int(np.argmax(hist))
    level = 0.5 * float(edges[k] + edges[k + 1])
    half_width = 2.0 * float(edges[1] - edges[0])
    sigma = 0.0
    for _ in range(6):  # narrow (or widen) the window from a few bins to ±4 σ of the peak
        near = values[np.abs(values - level) <= half_width]
        if near.size < 16:
            break
        level = float(np.median(near))
        sigma = 1.4826 * float(np.median(np.abs(near - level)))
        if sigma <= 0:
            break
        half_width = 4.0 * sigma
    return level, sigma


def _close_square(mask: NDArray[np.bool_], radius_px: int) -> NDArray[np.bool_]:
    """Binary closing with a (2r+1)² square; outside the array counts as glass."""
    if radius_px < 1:
        return mask
    size = 2 * radius_px + 1
    padded = np.pad(mask, radius_px + 1).view(np.uint8)
    grown = ndi.maximum_filter1d(ndi.maximum_filter1d(padded, size, axis=0), size, axis=1)
    closed = ndi.minimum_filter1d(ndi.minimum_filter1d(grown, size, axis=0), size, axis=1)
    r = radius_px + 1
    return closed[r:-r, r:-r].astype(bool)


def _check_inputs(
    image: ArrayLike, pixel_size_um: float, smoothing_um: float, min_area_um2: float
) -> NDArray[np.float32]:
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {img.shape}")
    if not math.isfinite(float(img.sum(dtype=np.float64))):
        raise ValueError("image has NaN or infinite pixels")
    for name, value in (("pixel_size_um", pixel_size_um), ("smoothing_um", smoothing_um)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if not (math.isfinite(min_area_um2) and min_area_um2 >= 0):
        raise ValueError(f"min_area_um2 must be ≥ 0, got {min_area_um2!r}")
    return img


def segment_tissue(
    image: ArrayLike,
    *,
    pixel_size_um: float,
    min_area_um2: float = 1.0e6,
    smoothing_um: float = 25.0,
    closing_um: float = 40.0,
) -> TissueMask:
    """Segment the sections of an overview image (steps 1-4 of the module method).

    Parameters
    ----------
    image : (H, W) array_like of float
        Overview in the anatomy channel, tissue brighter than glass; the
        image must include some glass.
    pixel_size_um : float
        Edge of one pixel (µm).
    min_area_um2 : float
        Smallest section (filled tissue area, µm²); smaller objects are dropped.
    smoothing_um : float
        Gaussian sigma of the smoothing (µm).
    closing_um : float
        Half-size of the square closing (µm); 0 disables it.

    Returns
    -------
    TissueMask
    """
    img = _check_inputs(image, pixel_size_um, smoothing_um, min_area_um2)
    p = float(pixel_size_um)
    sigma_px = smoothing_um / p
    closing_px = round(max(0.0, closing_um) / p)
    min_area_px = min_area_um2 / (p * p)
    labels = np.zeros(img.shape, dtype=np.int32)

    # coarse pass: statistics, threshold, candidate boxes
    q = max(1, math.floor(sigma_px))
    coarse = _block_mean(img, q)
    if coarse is img:
        q = 1
    # a q-box has variance (q² − 1)/12 px²; the Gaussian adds the rest of σ²
    coarse_sigma = math.sqrt(max(sigma_px**2 - (q * q - 1) / 12.0, 0.25)) / q
    coarse_s = ndi.gaussian_filter(coarse, coarse_sigma, mode="nearest", truncate=3.0)
    sample = coarse_s.ravel()
    if sample.size > _MAX_STAT_SAMPLES:  # a regular subsample is plenty for a histogram
        sample = sample[:: math.ceil(sample.size / _MAX_STAT_SAMPLES)]
    background, noise = _glass_level(sample)
    floor = background + _NOISE_FLOOR_SIGMAS * noise
    hi = float(np.percentile(sample, _CLIP_PERCENTILE))
    triangle = float(threshold_triangle(np.minimum(sample, hi))) if hi > background else background
    threshold = max(triangle, floor)
    logger.debug(
        "sections: glass %.2f ± %.3f, triangle %.2f, threshold %.2f", background, noise, triangle, threshold
    )
    candidates = _close_square(coarse_s > threshold, math.ceil(closing_px / q))
    cand_labels, _ = ndi.label(candidates)
    cand_boxes = ndi.find_objects(cand_labels)

    def box_area(box: tuple[slice, slice]) -> int:
        return (box[0].stop - box[0].start) * (box[1].stop - box[1].start)

    # biggest first, so a small object inside a section's hole is seen as inside
    cand_boxes.sort(key=lambda b: -box_area(b))
    margin = math.ceil(3.0 * sigma_px) + closing_px + 2
    h, w = img.shape
    boxes: list[tuple[slice, slice]] = []
    for rs, cs in cand_boxes:
        if (rs.stop - rs.start + 2) * (cs.stop - cs.start + 2) * q * q < min_area_px:
            continue  # even its whole box is too small: a speck
        r0 = max(0, rs.start * q - margin)
        r1 = min(h, rs.stop * q + margin)
        c0 = max(0, cs.start * q - margin)
        c1 = min(w, cs.stop * q + margin)
        smooth = ndi.gaussian_filter(img[r0:r1, c0:c1], sigma_px, mode="nearest", truncate=3.0)
        mask = ndi.binary_fill_holes(_close_square(smooth > threshold, closing_px))
        comp, n_comp = ndi.label(mask)
        if n_comp == 0:
            continue
        areas = np.bincount(comp.ravel(), minlength=n_comp + 1)
        taken = labels[r0:r1, c0:c1]
        for k, box in enumerate(ndi.find_objects(comp), start=1):
            if box is None or areas[k] < min_area_px:
                continue
            piece = comp[box] == k
            taken_box = taken[box]
            if np.count_nonzero(taken_box[piece]) > 0.5 * areas[k]:
                continue  # already found from a neighbouring crop, or inside a bigger section
            boxes.append(
                (slice(r0 + box[0].start, r0 + box[0].stop), slice(c0 + box[1].start, c0 + box[1].stop))
            )
            taken_box[piece & (taken_box == 0)] = len(boxes)
    return TissueMask(
        labels=labels, boxes=tuple(boxes), threshold=threshold, background=background, noise=noise
    )


# ================================================================== polygons


def _shoelace(poly: F64) -> tuple[float, float, float]:
    """Signed area and area centroid (x, y) of a closed ring given without repeat."""
    x, y = poly[:, 0], poly[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = 0.5 * float(cross.sum())
    if area == 0:
        return 0.0, float(x.mean()), float(y.mean())
    cx = float(((x + xn) * cross).sum()) / (6.0 * area)
    cy = float(((y + yn) * cross).sum()) / (6.0 * area)
    return area, cx, cy


def _section_polygon_px(mask: NDArray[np.bool_], dilation_px: float, simplify_px: float) -> F64:
    """Outline (row, col) of a filled mask grown by ``dilation_px``, in the mask's pixel frame."""
    pad = math.ceil(dilation_px) + 2
    padded = np.pad(mask, pad)
    # distance of every glass pixel centre to the nearest tissue pixel centre;
    # the pixel boundary is its 0.5 iso-line, the dilated boundary 0.5 + d
    distance = ndi.distance_transform_edt(~padded)
    contours = find_contours(distance, 0.5 + dilation_px)
    # the outer ring: a dilation can also close a pocket into an inner ring
    ring = max(contours, key=lambda c: abs(_shoelace(c)[0]))
    simplified = approximate_polygon(ring, tolerance=simplify_px) if simplify_px > 0 else ring
    if len(simplified) >= 4:  # a closed triangle at least (the closing vertex is repeated)
        ring = simplified
    if np.allclose(ring[0], ring[-1]):
        ring = ring[:-1]
    return np.asarray(ring, dtype=np.float64) - pad


def order_in_slide_rows(centroids_um: ArrayLike, heights_um: ArrayLike) -> NDArray[np.int64]:
    """Slide order of sections: rows top to bottom, left to right within a row.

    Parameters
    ----------
    centroids_um : (n, 2) array_like of float
        Section centres (x, y) in stage µm.
    heights_um : (n,) array_like of float
        Section heights (y extent, µm); the row tolerance is half their median.

    Returns
    -------
    (n,) int64 array
        Indices into ``centroids_um`` in slide order.
    """
    c = np.asarray(centroids_um, dtype=np.float64).reshape(-1, 2)
    if len(c) == 0:
        return np.zeros(0, dtype=np.int64)
    tolerance = 0.5 * float(np.median(np.asarray(heights_um, dtype=np.float64)))
    by_y = np.argsort(c[:, 1], kind="stable")
    row_of = np.zeros(len(c), dtype=np.int64)
    gaps = np.diff(c[by_y, 1]) > tolerance
    row_of[by_y] = np.concatenate([[0], np.cumsum(gaps)])
    return np.lexsort((c[:, 0], row_of)).astype(np.int64)


#: Margin added around the tissue by default (µm): the scan plan's default ``outline_margin_um``.
DEFAULT_MARGIN_UM = 30.0


def _hug_edges(
    image: NDArray[np.float32],
    tissue: TissueMask,
    k: int,
    *,
    pixel_size_um: float,
    smoothing_um: float,
    closing_um: float,
) -> tuple[NDArray[np.bool_], tuple[slice, slice]]:
    """Section ``k``'s mask with its edge at half the tissue level near the edge (step 5), and its box."""
    sigma_px = smoothing_um / pixel_size_um
    closing_px = round(max(0.0, closing_um) / pixel_size_um)
    pad = math.ceil(3.0 * sigma_px) + closing_px + 2
    rows, cols = tissue.boxes[k - 1]
    h, w = image.shape
    r0, r1 = max(0, rows.start - pad), min(h, rows.stop + pad)
    c0, c1 = max(0, cols.start - pad), min(w, cols.stop + pad)
    first = tissue.labels[r0:r1, c0:c1] == k
    smooth = ndi.gaussian_filter(image[r0:r1, c0:c1], sigma_px, mode="nearest", truncate=3.0)
    depth = ndi.distance_transform_edt(first)
    band = (depth > 3.0 * sigma_px) & (depth <= 6.0 * sigma_px)
    if np.count_nonzero(band) < 16:  # a thin section: its inner half
        band = depth > 0.5 * depth.max()
    edge_level = float(np.median(smooth[band]))
    threshold = max(tissue.threshold, tissue.background + 0.5 * (edge_level - tissue.background))
    hugged = ndi.binary_fill_holes(_close_square(smooth > threshold, closing_px)) & first
    comp, n = ndi.label(hugged)
    if n > 1:  # keep the main piece (fringes the lower threshold had joined)
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        sizes[0] = 0
        hugged = comp == int(np.argmax(sizes))
    if not hugged.any():
        return first, (slice(r0, r1), slice(c0, c1))
    return hugged, (slice(r0, r1), slice(c0, c1))


def find_sections(
    image: ArrayLike,
    *,
    origin_um: tuple[float, float],
    pixel_size_um: float,
    min_area_um2: float = 1.0e6,
    dilation_um: float = DEFAULT_MARGIN_UM,
    smoothing_um: float = 25.0,
    closing_um: float = 40.0,
    simplify_um: float | None = None,
    hug_edges: bool = True,
) -> list[FoundSection]:
    """Find the tissue sections on a slide overview, one polygon each, in slide order.

    See the module docstring for the method (glass level, smoothing,
    triangle threshold, closing, hole filling, size filter, dilated and
    simplified outlines, row ordering).

    Parameters
    ----------
    image : (H, W) array_like of float
        Overview in the anatomy channel (e.g. DAPI), tissue brighter than
        glass; must include some glass.
    origin_um : (float, float)
        Stage (x, y) of the top-left corner of pixel (0, 0), µm.
    pixel_size_um : float
        Edge of one pixel on the slide (µm).
    min_area_um2 : float
        Smallest section kept: tissue area with holes filled (µm²). The
        default, 1 mm², is a third of the smallest rat coronal section.
    dilation_um : float
        Margin added around each section's tissue (µm), ≥ 0 (a plan's
        ``outline_margin_um``).
    smoothing_um : float
        Gaussian sigma applied before thresholding (µm).
    closing_um : float
        Half-size of the square binary closing (µm); 0 disables it.
    simplify_um : float, optional
        Douglas-Peucker tolerance for the outline (µm); default one pixel.
        The simplified outline stays within this distance of the exact one.
    hug_edges : bool
        Find each section's edge at half its tissue level (step 5); False
        keeps the first threshold's mask (≈ 2σ of the smoothing outside).

    Returns
    -------
    list of FoundSection
        In slide order, ``index`` 1, 2, ...; empty if the image shows no tissue.
    """
    if not (math.isfinite(dilation_um) and dilation_um >= 0):
        raise ValueError(f"dilation_um must be ≥ 0, got {dilation_um!r}")
    p = float(pixel_size_um)
    tissue = segment_tissue(
        image,
        pixel_size_um=p,
        min_area_um2=min_area_um2,
        smoothing_um=smoothing_um,
        closing_um=closing_um,
    )
    if tissue.n_sections == 0:
        return []
    simplify_px = (p if simplify_um is None else float(simplify_um)) / p
    ox, oy = (float(origin_um[0]), float(origin_um[1]))
    unordered: list[FoundSection] = []
    heights_um: list[float] = []
    img = np.asarray(image, dtype=np.float32)
    for k, box in enumerate(tissue.boxes, start=1):
        mask = tissue.section_mask(k)
        if hug_edges:
            mask, box = _hug_edges(
                img, tissue, k, pixel_size_um=p, smoothing_um=smoothing_um, closing_um=closing_um
            )
        ring = _section_polygon_px(mask, dilation_um / p, simplify_px)
        poly = np.column_stack(
            [ox + (ring[:, 1] + box[1].start + 0.5) * p, oy + (ring[:, 0] + box[0].start + 0.5) * p]
        )
        area, cx, cy = _shoelace(poly)
        if area < 0:
            poly = np.ascontiguousarray(poly[::-1])
            area = -area
        x0, y0 = poly.min(axis=0)
        x1, y1 = poly.max(axis=0)
        unordered.append(
            FoundSection(
                index=0,
                polygon_um=poly,
                centroid_um=(cx, cy),
                area_um2=area,
                bbox_um=(float(x0), float(y0), float(x1), float(y1)),
                tissue_area_um2=float(mask.sum()) * p * p,
            )
        )
        rows_with_tissue = np.flatnonzero(mask.any(axis=1))
        heights_um.append(float(rows_with_tissue[-1] - rows_with_tissue[0] + 1) * p)
    order = order_in_slide_rows([s.centroid_um for s in unordered], heights_um)
    return [replace(unordered[i], index=n) for n, i in enumerate(order, start=1)]
