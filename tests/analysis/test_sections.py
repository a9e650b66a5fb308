"""find_sections on small synthetic overviews with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.sections import FoundSection, find_sections, order_in_slide_rows, segment_tissue

PIXEL_UM = 8.0
ORIGIN_UM = (20_000.0, 1_000.0)
GLASS_ADU = 100.0
TISSUE_ADU = 30.0  # faint autofluorescence above glass, as DAPI white matter at 4x
NOISE_ADU = 3.0


# ------------------------------------------------------------------ helpers


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Stage x, y (µm) of every pixel centre."""
    rows, cols = np.indices(shape, dtype=np.float64)
    return ORIGIN_UM[0] + (cols + 0.5) * PIXEL_UM, ORIGIN_UM[1] + (rows + 0.5) * PIXEL_UM


def _ellipse(shape, centre_um, radii_um, angle_deg=0.0) -> np.ndarray:
    x, y = _grid(shape)
    a = math.radians(angle_deg)
    dx, dy = x - centre_um[0], y - centre_um[1]
    u = dx * math.cos(a) + dy * math.sin(a)
    v = -dx * math.sin(a) + dy * math.cos(a)
    return (u / radii_um[0]) ** 2 + (v / radii_um[1]) ** 2 <= 1.0


def _render(tissue: np.ndarray, *, seed: int = 0, nuclei: bool = True) -> np.ndarray:
    """Glass + noise, faint textured tissue with bright nuclei."""
    rng = np.random.default_rng(seed)
    image = np.full(tissue.shape, GLASS_ADU, dtype=np.float32)
    texture = 1.0 + 0.2 * rng.standard_normal(tissue.shape)
    image += (TISSUE_ADU * texture * tissue).astype(np.float32)
    if nuclei:
        bright = tissue & (rng.random(tissue.shape) < 0.05)
        image += (400.0 * bright).astype(np.float32)
    image += rng.normal(0.0, NOISE_ADU, tissue.shape).astype(np.float32)
    return image


def _inside(polygon_um: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon, vectorised over points."""
    px, py = polygon_um[:, 0], polygon_um[:, 1]
    qx, qy = np.roll(px, -1), np.roll(py, -1)
    x = np.asarray(x, dtype=np.float64)[..., None]
    y = np.asarray(y, dtype=np.float64)[..., None]
    crosses = (py > y) != (qy > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = px + (y - py) * (qx - px) / (qy - py)
    return (crosses & (x < x_at)).sum(axis=-1) % 2 == 1


def _perimeter(polygon_um: np.ndarray) -> float:
    return float(np.linalg.norm(np.roll(polygon_um, -1, axis=0) - polygon_um, axis=1).sum())


def _find(image, **kwargs) -> list[FoundSection]:
    return find_sections(image, origin_um=ORIGIN_UM, pixel_size_um=PIXEL_UM, **kwargs)


# ---------------------------------------------------------- a synthetic slide

SHAPE = (700, 1300)  # 5.6 × 10.4 mm at 8 µm
# (centre, radii, angle): two rows, in the order a person numbers them;
# centres within a row differ in y by up to ~20 % of the section height
ROW_1 = [
    ((21_900.0, 2_050.0), (1_300.0, 900.0), 5.0),
    ((25_300.0, 2_300.0), (1_000.0, 800.0), -10.0),
    ((28_500.0, 1_950.0), (1_250.0, 950.0), 0.0),
]
ROW_2 = [
    ((23_000.0, 4_400.0), (2_600.0, 700.0), 3.0),  # horizontal section with a lesion cavity
    ((28_300.0, 4_250.0), (1_100.0, 850.0), 20.0),
]
CAVITY = ((23_300.0, 4_400.0), (450.0, 330.0), 0.0)
CANAL = ((21_900.0, 2_050.0), (45.0, 45.0), 0.0)
SPECK = ((26_700.0, 3_250.0), (120.0, 100.0), 0.0)  # 0.04 mm²: dust, not a section


@pytest.fixture(scope="module")
def slide_image() -> tuple[np.ndarray, list[np.ndarray]]:
    blobs = [_ellipse(SHAPE, *spec) for spec in ROW_1 + ROW_2]
    tissue = np.zeros(SHAPE, dtype=bool)
    for b in blobs:
        tissue |= b
    tissue &= ~_ellipse(SHAPE, *CAVITY)
    tissue &= ~_ellipse(SHAPE, *CANAL)
    tissue |= _ellipse(SHAPE, *SPECK)
    return _render(tissue, seed=1), blobs


def test_finds_each_section_once_and_ignores_the_speck(slide_image):
    image, blobs = slide_image
    found = _find(image)
    assert len(found) == len(blobs)


def test_sections_are_numbered_row_by_row_left_to_right(slide_image):
    image, _ = slide_image
    found = _find(image)
    assert [s.index for s in found] == [1, 2, 3, 4, 5]
    expected = [c for c, _, _ in ROW_1 + ROW_2]
    for section, (cx, cy) in zip(found, expected, strict=True):
        assert _inside(section.polygon_um, cx, cy), f"section {section.index} is not around {cx, cy}"


def test_each_polygon_contains_its_whole_blob(slide_image):
    image, blobs = slide_image
    x, y = _grid(SHAPE)
    for section, blob in zip(_find(image), blobs, strict=True):
        inside = _inside(section.polygon_um, x[blob], y[blob])
        assert inside.all(), f"section {section.index}: {np.count_nonzero(~inside)} blob pixels outside"


def test_polygons_do_not_swallow_their_neighbours(slide_image):
    image, blobs = slide_image
    x, y = _grid(SHAPE)
    found = _find(image)
    for i, section in enumerate(found):
        for j, blob in enumerate(blobs):
            if i != j:
                assert not _inside(section.polygon_um, x[blob][::5], y[blob][::5]).any()


def test_holes_are_filled_so_cavity_and_canal_neither_split_nor_puncture(slide_image):
    image, _ = slide_image
    found = _find(image, dilation_um=0.0)
    horizontal, coronal = found[3], found[0]
    assert _inside(horizontal.polygon_um, *CAVITY[0])
    assert _inside(coronal.polygon_um, *CANAL[0])
    mask = segment_tissue(image, pixel_size_um=PIXEL_UM)
    assert mask.n_sections == 5
    for centre_um in (CAVITY[0], CANAL[0]):
        r, c = (int((v - o) // PIXEL_UM) for v, o in zip(centre_um[::-1], ORIGIN_UM[::-1], strict=True))
        assert mask.labels[r, c] > 0, f"hole at {centre_um} not filled"


def test_a_speck_inside_a_cavity_is_not_a_section():
    tissue = _ellipse(SHAPE, (25_000.0, 3_800.0), (3_000.0, 1_200.0))
    tissue &= ~_ellipse(SHAPE, (25_000.0, 3_800.0), (1_400.0, 700.0))  # a big cavity
    tissue |= _ellipse(SHAPE, (25_000.0, 3_800.0), (300.0, 250.0))  # debris inside it
    assert len(_find(_render(tissue, seed=3), min_area_um2=0.1e6)) == 1


def test_dilation_grows_the_area_by_perimeter_times_distance():
    blob = _ellipse(SHAPE, (25_000.0, 3_800.0), (2_000.0, 1_200.0), 15.0)
    image = _render(blob, seed=2)
    d = 100.0
    (plain,) = _find(image, dilation_um=0.0)
    (grown,) = _find(image, dilation_um=d)
    # Steiner: a convex shape grown by d gains perimeter·d + π·d²
    expected = _perimeter(plain.polygon_um) * d + math.pi * d * d
    assert grown.area_um2 - plain.area_um2 == pytest.approx(expected, rel=0.03)
    assert grown.tissue_area_um2 == plain.tissue_area_um2
    # every vertex of the grown outline lies d outside the plain one (± the
    # simplification tolerance, one pixel, of each), and the plain one lies inside it
    distances = _distance_to_outline(grown.polygon_um, plain.polygon_um)
    assert distances == pytest.approx(np.full_like(distances, d), abs=2 * PIXEL_UM)
    assert not _inside(plain.polygon_um, grown.polygon_um[:, 0], grown.polygon_um[:, 1]).any()
    assert _inside(grown.polygon_um, plain.polygon_um[:, 0], plain.polygon_um[:, 1]).all()


def _distance_to_outline(points: np.ndarray, polygon_um: np.ndarray) -> np.ndarray:
    a = polygon_um[None, :, :]
    ab = np.roll(polygon_um, -1, axis=0)[None, :, :] - a
    ap = points[:, None, :] - a
    t = np.clip((ap * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
    return np.linalg.norm(ap - t[..., None] * ab, axis=-1).min(axis=1)


def test_polygon_matches_a_sharp_rectangle_in_stage_coordinates():
    x, y = _grid(SHAPE)
    box = (22_000.0, 2_000.0, 26_000.0, 4_400.0)
    tissue = (x > box[0]) & (x < box[2]) & (y > box[1]) & (y < box[3])
    image = _render(tissue, seed=4, nuclei=False)
    (section,) = _find(image, dilation_um=0.0, smoothing_um=4.0, closing_um=0.0)
    assert section.bbox_um == pytest.approx(box, abs=1.5 * PIXEL_UM)
    assert section.centroid_um == pytest.approx(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), abs=PIXEL_UM)
    assert section.area_um2 == pytest.approx((box[2] - box[0]) * (box[3] - box[1]), rel=0.02)
    assert section.tissue_area_um2 == pytest.approx(section.area_um2, rel=0.02)


def test_polygons_are_simple_rings_with_positive_area(slide_image):
    image, _ = slide_image
    for section in _find(image):
        poly = section.polygon_um
        assert poly.ndim == 2 and poly.shape[1] == 2 and len(poly) >= 3
        assert not np.allclose(poly[0], poly[-1])
        assert section.area_um2 > 0
        x0, y0, x1, y1 = section.bbox_um
        assert (x0, y0, x1, y1) == (poly[:, 0].min(), poly[:, 1].min(), poly[:, 0].max(), poly[:, 1].max())
        assert _no_self_intersections(poly)


def _no_self_intersections(poly: np.ndarray) -> bool:
    a, b = poly, np.roll(poly, -1, axis=0)
    n = len(poly)

    def orient(p, q, r):
        return np.sign(
            (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1])
            - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0])
        )

    i, j = np.triu_indices(n, k=2)
    keep = ~((i == 0) & (j == n - 1))  # first and last edge share a vertex
    i, j = i[keep], j[keep]
    o1, o2 = orient(a[i], b[i], a[j]), orient(a[i], b[i], b[j])
    o3, o4 = orient(a[j], b[j], a[i]), orient(a[j], b[j], b[i])
    return not np.any((o1 * o2 < 0) & (o3 * o4 < 0))


def test_section_touching_the_image_edge_gets_a_closed_polygon():
    blob = _ellipse(SHAPE, (20_300.0, 3_000.0), (1_500.0, 1_000.0))  # cut by the left edge
    (section,) = _find(_render(blob, seed=5), dilation_um=0.0)
    assert section.bbox_um[0] == pytest.approx(ORIGIN_UM[0], abs=PIXEL_UM)
    assert len(section.polygon_um) >= 3


def test_bare_glass_finds_nothing():
    image = _render(np.zeros(SHAPE, dtype=bool), seed=6)
    assert _find(image) == []


def test_constant_image_finds_nothing():
    assert _find(np.full((200, 300), GLASS_ADU, dtype=np.float32)) == []


def test_noiseless_section_is_found():
    blob = _ellipse(SHAPE, (25_000.0, 3_800.0), (2_000.0, 1_200.0))
    image = np.where(blob, GLASS_ADU + TISSUE_ADU, GLASS_ADU).astype(np.float32)
    assert len(_find(image)) == 1


def test_min_area_decides_what_is_a_section():
    tissue = _ellipse(SHAPE, (22_500.0, 3_000.0), (1_200.0, 900.0))
    tissue |= _ellipse(SHAPE, (27_000.0, 3_000.0), (400.0, 400.0))  # 0.5 mm²
    image = _render(tissue, seed=7)
    assert len(_find(image)) == 1
    assert len(_find(image, min_area_um2=0.3e6)) == 2


def test_a_crack_across_a_section_is_closed():
    tissue = _ellipse(SHAPE, (25_000.0, 3_800.0), (2_000.0, 1_200.0))
    x, _ = _grid(SHAPE)
    tissue &= np.abs(x - 25_000.0) > 10.0  # a 20 µm crack, thinner than the closing
    assert len(_find(_render(tissue, seed=8))) == 1


# ------------------------------------------------------------------ ordering


@pytest.mark.parametrize(
    ("centroids", "heights", "expected"),
    [
        pytest.param([(3, 0), (1, 0), (2, 0)], [10, 10, 10], [1, 2, 0], id="one-row"),
        pytest.param([(5, 20), (1, 21), (9, 0), (1, 1)], [10] * 4, [3, 2, 1, 0], id="two-rows"),
        pytest.param([(0, 0), (10, 4), (20, -4)], [10] * 3, [0, 1, 2], id="wobbly-row"),
        pytest.param([(0, 0), (10, 6), (20, 12)], [10] * 3, [0, 1, 2], id="rows-apart-by-more-than-half"),
        pytest.param([], [], [], id="empty"),
    ],
)
def test_order_in_slide_rows(centroids, heights, expected):
    assert order_in_slide_rows(np.array(centroids, dtype=float).reshape(-1, 2), heights).tolist() == expected


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        pytest.param(np.zeros((4, 4, 3)), {}, "2-D", id="rgb"),
        pytest.param(np.zeros((0, 5)), {}, "2-D", id="empty"),
        pytest.param(np.full((8, 8), np.nan), {}, "NaN", id="nan"),
        pytest.param(np.zeros((8, 8)), {"pixel_size_um": 0.0}, "pixel_size_um", id="zero-pixel"),
        pytest.param(np.zeros((8, 8)), {"dilation_um": -1.0}, "dilation_um", id="negative-dilation"),
        pytest.param(np.zeros((8, 8)), {"smoothing_um": 0.0}, "smoothing_um", id="no-smoothing"),
        pytest.param(np.zeros((8, 8)), {"min_area_um2": -1.0}, "min_area_um2", id="negative-area"),
    ],
)
def test_bad_input_is_refused(image, kwargs, match):
    args = {"origin_um": ORIGIN_UM, "pixel_size_um": PIXEL_UM, **kwargs}
    with pytest.raises(ValueError, match=match):
        find_sections(image, **args)
