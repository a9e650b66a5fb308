"""Tests of the demo microscope's virtual slide (rendering and ground truth)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from matplotlib.path import Path
from scipy.spatial import cKDTree

from acquisition.demo.slide import (
    BEAD_AREA_UM,
    CHANNELS,
    SLIDE_SIZE_UM,
    TISSUE_ZONE_UM,
    SectionSpec,
    VirtualSlide,
    demo_slide,
    demo_specs,
    horizontal_axon_density,
    make_slide,
)

pytestmark = pytest.mark.filterwarnings("error")

P10X_UM = 0.65


@pytest.fixture(scope="module")
def slide() -> VirtualSlide:
    return demo_slide(seed=2026)


def _centre(bbox: tuple[float, float, float, float]) -> tuple[float, float]:
    return ((bbox[0] + bbox[2]) / 2.0, (bbox[1] + bbox[3]) / 2.0)


def _focus(slide: VirtualSlide, xy: tuple[float, float]) -> float:
    return float(slide.focal_plane_z_um(*xy))


# ------------------------------------------------------------------ tissue / glass


@pytest.mark.parametrize("channel", CHANNELS)
def test_frame_over_section_shows_tissue_and_glass_is_dark(slide: VirtualSlide, channel: str) -> None:
    territory = slide.section("rat01-Th7").rubrospinal_territory
    assert territory is not None
    xy = (float(territory[:, 0].mean()), float(territory[:, 1].mean()))
    img = slide.render(
        center_um=xy, pixel_size_um=P10X_UM, shape=(256, 256), channel=channel, z_um=_focus(slide, xy)
    )
    assert img.dtype == np.float32 and img.shape == (256, 256)
    assert np.median(img) > 0.2  # autofluorescence everywhere in tissue
    assert img.max() > 5.0  # and bright objects

    glass_xy = (10_000.0, 12_500.0)  # on the label end of the slide
    glass = slide.render(
        center_um=glass_xy, pixel_size_um=P10X_UM, shape=(256, 256), channel=channel, z_um=0.0
    )
    assert glass.max() < 1e-3 * img.mean()


def test_render_writes_into_out(slide: VirtualSlide) -> None:
    xy = _centre(slide.section_bbox_um("rat01-Th7"))
    out = np.full((64, 80), np.nan, dtype=np.float32)
    got = slide.render(center_um=xy, pixel_size_um=P10X_UM, shape=(64, 80), channel="DAPI", z_um=0.0, out=out)
    assert got is out and np.isfinite(out).all()


# ----------------------------------------------------------- tile locality


@pytest.mark.parametrize(
    ("channel", "pixel_size_um", "defocus_um", "section_id"),
    [
        ("DAPI", 0.65, 0.0, "rat01-C5"),
        ("tdTomato", 0.65, 0.0, "rat01-C5"),
        ("tdTomato", 0.65, 12.0, "rat04-Th7"),
        ("DAPI", 0.325, 4.0, "rat03-lesion"),
        ("tdTomato", 1.625, -30.0, "rat03-lesion"),
        ("DAPI", 1.3, 45.0, "rat06-L2"),
    ],
    ids=["dapi-10x", "tracer-10x", "tracer-10x-defocus", "dapi-20x", "tracer-4x-far", "dapi-odd-p"],
)
def test_frames_offset_by_whole_pixels_agree_exactly(
    slide: VirtualSlide, channel: str, pixel_size_um: float, defocus_um: float, section_id: str
) -> None:
    # straddle the section's left edge so the overlap holds glass, edge and tissue
    box = slide.section_bbox_um(section_id)
    h, w = 240, 320
    xy = (box[0] + 0.3 * w * pixel_size_um, (box[1] + box[3]) / 2.0)
    z = _focus(slide, xy) + defocus_um
    a = slide.render(center_um=xy, pixel_size_um=pixel_size_um, shape=(h, w), channel=channel, z_um=z)
    for dy, dx in [(37, -101), (-120, 5), (1, 1)]:
        b_xy = (xy[0] + dx * pixel_size_um, xy[1] + dy * pixel_size_um)
        b = slide.render(center_um=b_xy, pixel_size_um=pixel_size_um, shape=(h, w), channel=channel, z_um=z)
        ra = slice(max(dy, 0), h + min(dy, 0))
        ca = slice(max(dx, 0), w + min(dx, 0))
        rb = slice(max(-dy, 0), h + min(-dy, 0))
        cb = slice(max(-dx, 0), w + min(-dx, 0))
        np.testing.assert_array_equal(a[ra, ca], b[rb, cb])
    assert a.max() > 0.0 and a.min() == 0.0  # both tissue and glass were covered


def test_same_point_same_value_in_differently_shaped_frames(slide: VirtualSlide) -> None:
    xy = _centre(slide.section_bbox_um("rat05-C5"))
    big = slide.render(center_um=xy, pixel_size_um=P10X_UM, shape=(400, 600), channel="DAPI", z_um=3.0)
    # a 100x150 frame whose top-left pixel is pixel (120, 200) of the big one
    c_xy = (xy[0] + (200 + 75 - 300) * P10X_UM, xy[1] + (120 + 50 - 200) * P10X_UM)
    small = slide.render(center_um=c_xy, pixel_size_um=P10X_UM, shape=(100, 150), channel="DAPI", z_um=3.0)
    np.testing.assert_array_equal(small, big[120:220, 200:350])


# ------------------------------------------------------------------ focus


def _sharpness(img: np.ndarray) -> float:
    lap = img[1:-1, :-2] + img[1:-1, 2:] + img[:-2, 1:-1] + img[2:, 1:-1] - 4.0 * img[1:-1, 1:-1]
    return float(lap.var() / img.mean() ** 2)


@pytest.mark.parametrize("channel", CHANNELS)
def test_defocus_lowers_sharpness_and_refocus_restores_it(slide: VirtualSlide, channel: str) -> None:
    section = slide.section("rat02-C5")
    assert section.rubrospinal_territory is not None
    xy = tuple(section.rubrospinal_territory.mean(axis=0))
    z0 = _focus(slide, xy)

    def sharp(z: float) -> float:
        img = slide.render(center_um=xy, pixel_size_um=P10X_UM, shape=(384, 384), channel=channel, z_um=z)
        return _sharpness(img)

    in_focus = sharp(z0)
    assert sharp(z0 + 10.0) < 0.5 * in_focus
    assert sharp(z0 - 25.0) < 0.05 * in_focus
    assert sharp(z0) == in_focus
    # the focal plane really is where sharpness peaks
    assert in_focus > sharp(z0 + 2.0) and in_focus > sharp(z0 - 2.0)


def test_focal_plane_is_a_gently_tilted_surface(slide: VirtualSlide) -> None:
    x0, y0, x1, y1 = slide.tissue_bbox_um()
    xs, ys = np.meshgrid(np.linspace(x0, x1, 60), np.linspace(y0, y1, 30))
    z = slide.focal_plane_z_um(xs, ys)
    assert z.shape == xs.shape
    assert 20.0 <= float(np.ptp(z)) <= 40.0
    steps = np.abs(np.diff(z, axis=1)) / np.diff(xs, axis=1)  # µm per µm
    assert steps.max() < 5e-3


# -------------------------------------------------------------------- truth


def _tiles(box: tuple[float, float, float, float], tile_px: int, p: float) -> list[tuple[float, float]]:
    span = tile_px * p
    nx = math.ceil((box[2] - box[0]) / span)
    ny = math.ceil((box[3] - box[1]) / span)
    return [(box[0] + (i + 0.5) * span, box[1] + (j + 0.5) * span) for j in range(ny) for i in range(nx)]


def _mask_areas(
    slide: VirtualSlide, section_id: str, box: tuple[float, float, float, float], p: float, names: list[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Region and region-and-axon areas (µm²) counted on 2048² truth-mask tiles."""
    tile = 2048
    area: dict[str, float] = {}
    axon: dict[str, float] = {}
    for xy in _tiles(box, tile, p):
        masks = slide.render_truth_labels(
            center_um=xy, pixel_size_um=p, shape=(tile, tile), section_id=section_id
        )
        for name in names:
            mask = masks[name]
            area[name] = area.get(name, 0.0) + int(mask.sum()) * p * p
            axon[name] = axon.get(name, 0.0) + int((mask & masks["axons"]).sum()) * p * p
    return area, axon


def test_coronal_truth_masks_match_geometric_areas(slide: VirtualSlide) -> None:
    section_id = "rat04-Th7"
    names = list(slide.section(section_id).region_names)
    area, axon = _mask_areas(slide, section_id, slide.section_bbox_um(section_id), P10X_UM, names)
    checked = 0
    for row in slide.truth_table(section_id):
        assert area[row.region] == pytest.approx(row.area_um2, rel=0.01), row.region
        if row.n_axon_objects >= 300:
            assert axon[row.region] == pytest.approx(row.axon_area_um2, rel=0.01), row.region
            checked += 1
    assert checked >= 4  # section, white matter, territory, contralateral half, ...


def test_horizontal_truth_masks_match_geometric_areas(slide: VirtualSlide) -> None:
    section_id = "rat05-lesion"
    sec = slide.section(section_id)
    assert sec.epicenter_um is not None and sec.rostral_direction is not None
    assert sec.rostral_direction[0] < -0.95  # rostral is toward -x
    # tile the rostral half only (enough for its bins, and fast)
    box = sec.bbox_um
    rostral_bins = [r for r in slide.truth_table(section_id) if r.region.startswith("rc_-")]
    assert len(rostral_bins) >= 8
    names = [r.region for r in rostral_bins]
    area, axon = _mask_areas(
        slide, section_id, (box[0], box[1], sec.epicenter_um[0] + 400.0, box[3]), P10X_UM, names
    )
    checked = 0
    for row in rostral_bins:
        assert area[row.region] == pytest.approx(row.area_um2, rel=0.01), row.region
        if row.axon_area_um2 >= 3000.0:
            assert axon[row.region] == pytest.approx(row.axon_area_um2, rel=0.01), row.region
            checked += 1
    assert checked >= 4


def test_truth_table_is_consistent(slide: VirtualSlide) -> None:
    for section in slide.sections:
        rows = {r.region: r for r in slide.truth_table(section.section_id)}
        assert tuple(rows) == section.region_names
        total = rows["section"]
        for a, b in [("white_matter", "gray_matter"), ("left", "right")] + (
            [("dorsal", "ventral")] if section.spec.orientation == "coronal" else []
        ):
            assert rows[a].area_um2 + rows[b].area_um2 == pytest.approx(total.area_um2, rel=1e-9)
            assert rows[a].axon_area_um2 + rows[b].axon_area_um2 == pytest.approx(total.axon_area_um2)
        bins = [r for name, r in rows.items() if name.startswith("rc_")]
        if bins:
            assert sum(r.area_um2 for r in bins) == pytest.approx(total.area_um2, rel=1e-9)
            assert sum(r.axon_area_um2 for r in bins) == pytest.approx(total.axon_area_um2)
        for r in rows.values():
            assert r.area_um2 > 0
            assert r.pct_axonal_area == pytest.approx(100 * r.axon_area_um2 / r.area_um2)


def _boundary_distance(points: np.ndarray, polygon: np.ndarray, cap: float) -> np.ndarray:
    """Distance from points to a polygon boundary (exact below ``cap``).

    An edge within ``cap`` of a point has its midpoint within ``cap + L/2``
    of it, so only points near some midpoint get the brute-force treatment.
    """
    a = polygon
    ab = np.roll(polygon, -1, axis=0) - a
    half_len = 0.5 * np.hypot(ab[:, 0], ab[:, 1]).max()
    near, _ = cKDTree(a + 0.5 * ab).query(points, distance_upper_bound=cap + half_len)
    out = np.full(len(points), np.inf)
    idx = np.flatnonzero(np.isfinite(near))
    for s in range(0, len(idx), 1000):
        p = points[idx[s : s + 1000], None, :]
        t = np.clip(((p - a) * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
        out[idx[s : s + 1000]] = np.hypot(*(p - a - t[..., None] * ab).transpose(2, 0, 1)).min(axis=1)
    return out


def _inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    return Path(polygon).contains_points(points)


@pytest.mark.parametrize("section_id", ["rat02-C5", "rat06-lesion"], ids=["coronal", "horizontal"])
def test_objects_are_disjoint_and_each_inside_one_region(slide: VirtualSlide, section_id: str) -> None:
    sec = slide.section(section_id)
    obj = slide.axon_objects(section_id)
    xy, r, owner = obj.disc_xy_um, obj.disc_radius_um, obj.disc_object
    assert len(obj.area_um2) > 50
    # disjoint: discs of different objects never touch
    tree = cKDTree(xy)
    pairs = tree.query_pairs(2 * r.max(), output_type="ndarray")
    other = owner[pairs[:, 0]] != owner[pairs[:, 1]]
    i, j = pairs[other].T
    assert (np.hypot(*(xy[i] - xy[j]).T) > r[i] + r[j]).all()
    # chains: straight, equal discs, r <= spacing < 2r (exact area formula holds)
    same = owner[1:] == owner[:-1]
    step = np.hypot(*np.diff(xy, axis=0).T)[same]
    rr = r[1:][same]
    assert ((step >= rr * 0.999) & (step < 2 * rr)).all()
    # inside one region: every boundary is at least r away and labels match
    tissue = obj.tissue[owner]
    hole = sec.central_canal if sec.central_canal is not None else sec.lesion_cavity
    gray = sec.gray_matter[0]
    polys = [sec.outline, gray] + [q for q in (hole, sec.rubrospinal_territory) if q is not None]
    for poly in polys:
        assert (_boundary_distance(xy, poly, cap=r.max()) >= r).all()
    assert _inside(xy, sec.outline).all()
    if hole is not None:
        assert not _inside(xy, hole).any()
    np.testing.assert_array_equal(_inside(xy, gray), tissue == "gray_matter")
    if sec.rubrospinal_territory is not None:
        np.testing.assert_array_equal(
            _inside(xy, sec.rubrospinal_territory), tissue == "rubrospinal_territory"
        )
    side = (xy - sec.midline_point_um) @ np.asarray(sec.right_direction)
    assert (np.abs(side) >= r).all()
    np.testing.assert_array_equal(np.where(side > 0, "right", "left"), obj.side[owner])
    if sec.ventral_direction is not None:
        dv = (xy - sec.midline_point_um) @ np.asarray(sec.ventral_direction)
        assert (np.abs(dv) >= r).all()
        np.testing.assert_array_equal(np.where(dv > 0, "ventral", "dorsal"), obj.zone[owner])
    else:
        assert sec.epicenter_um is not None and sec.rostral_direction is not None
        s = -(xy - sec.epicenter_um) @ np.asarray(sec.rostral_direction)
        lo = np.floor(s / 500.0) * 500.0
        assert (np.minimum(s - lo, lo + 500.0 - s) >= r).all()
        names = np.array([f"rc_{int(a)}_{int(a) + 500}" for a in lo])
        np.testing.assert_array_equal(names, obj.zone[owner])
    # areas: sum of objects equals the truth table
    row = {t.region: t for t in slide.truth_table(section_id)}["section"]
    assert obj.area_um2.sum() == pytest.approx(row.axon_area_um2)


# ------------------------------------------------------------------ anatomy


def test_demo_slide_layout(slide: VirtualSlide) -> None:
    sections = slide.sections
    coronal = [s for s in sections if s.spec.orientation == "coronal"]
    assert len(coronal) >= 6
    assert {s.spec.level for s in coronal} == {"C5", "Th7", "L2"}
    assert len({s.spec.group for s in coronal}) >= 2
    horizontal = [s for s in sections if s.spec.orientation == "horizontal"]
    assert any(s.lesion_cavity is not None for s in horizontal)
    boxes = np.array([s.bbox_um for s in sections])
    zx0, zy0, zx1, zy1 = TISSUE_ZONE_UM
    assert (boxes[:, 0] >= zx0).all() and (boxes[:, 2] <= zx1).all()
    assert (boxes[:, 1] >= zy0).all() and (boxes[:, 3] <= zy1).all()
    assert zx1 <= SLIDE_SIZE_UM[0] and zy1 <= SLIDE_SIZE_UM[1]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            gap_x = max(boxes[j, 0] - boxes[i, 2], boxes[i, 0] - boxes[j, 2])
            gap_y = max(boxes[j, 1] - boxes[i, 3], boxes[i, 1] - boxes[j, 3])
            assert max(gap_x, gap_y) >= 1000.0, (sections[i].section_id, sections[j].section_id)
    x0, _, _, y1 = slide.tissue_bbox_um()
    assert x0 == boxes[:, 0].min() and y1 == boxes[:, 3].max()


@pytest.mark.parametrize(
    ("level", "width_um", "height_um"),
    [("C5", 3600, 2500), ("Th7", 2600, 2000), ("L2", 3000, 2300)],
    ids=["C5", "Th7", "L2"],
)
def test_coronal_sizes_and_canal_are_realistic(
    slide: VirtualSlide, level: str, width_um: float, height_um: float
) -> None:
    for s in slide.sections:
        if s.spec.level != level:
            continue
        local = (s.outline - s.spec.centre_um) @ np.array([s.right_direction, s.ventral_direction]).T
        assert np.ptp(local[:, 0]) == pytest.approx(width_um, rel=0.05)
        assert np.ptp(local[:, 1]) == pytest.approx(height_um, rel=0.05)
        assert s.central_canal is not None
        diameter = 2 * np.sqrt(_polygon_area(s.central_canal) / np.pi)
        assert 60.0 <= diameter <= 100.0
        gray_fraction = _polygon_area(s.gray_matter[0]) / _polygon_area(s.outline)
        assert 0.12 <= gray_fraction <= 0.45


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0] - p[:, 0].mean(), p[:, 1] - p[:, 1].mean()
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


@pytest.mark.parametrize(
    "section_id", ["rat01-C5", "rat02-Th7", "rat06-L2"], ids=["left-inj", "right-inj", "right-inj-L2"]
)
def test_axons_only_on_the_contralateral_side(slide: VirtualSlide, section_id: str) -> None:
    sec = slide.section(section_id)
    box = sec.bbox_um
    p = 1.3
    shape = (int((box[3] - box[1]) / p) + 8, int((box[2] - box[0]) / p) + 8)
    xy = _centre(box)
    img = slide.render(center_um=xy, pixel_size_um=p, shape=shape, channel="tdTomato", z_um=_focus(slide, xy))
    masks = slide.render_truth_labels(center_um=xy, pixel_size_um=p, shape=shape, section_id=section_id)
    contra = sec.spec.tracer_side
    ipsi = "left" if contra == "right" else "right"
    bright = img > 2.0  # well above autofluorescence (~0.3-0.4)
    assert (bright & masks[ipsi]).sum() == 0
    assert (bright & masks[contra]).sum() > 100
    assert img[masks[contra]].mean() > img[masks[ipsi]].mean()
    rows = {r.region: r for r in slide.truth_table(section_id)}
    assert rows[ipsi].axon_area_um2 == 0.0
    assert rows["rubrospinal_territory"].pct_axonal_area > 5 * rows["section"].pct_axonal_area


def test_groups_differ_below_the_lesion_and_animals_vary(slide: VirtualSlide) -> None:
    def rst_pct(section_id: str) -> float:
        rows = {r.region: r for r in slide.truth_table(section_id)}
        return rows["rubrospinal_territory"].pct_axonal_area

    for a, b in [("rat01", "rat02"), ("rat03", "rat04"), ("rat05", "rat06")]:
        assert rst_pct(f"{a}-C5") != pytest.approx(rst_pct(f"{b}-C5"), rel=1e-3)  # animals differ
    intact = np.mean([rst_pct("rat01-L2"), rst_pct("rat02-L2")])
    vehicle = np.mean([rst_pct("rat03-L2"), rst_pct("rat04-L2")])
    treated = np.mean([rst_pct("rat05-L2"), rst_pct("rat06-L2")])
    assert vehicle < treated < intact
    assert vehicle < 0.3 * intact
    # rostral of the lesion the groups look alike
    c5 = [rst_pct(f"rat0{k}-C5") for k in range(1, 7)]
    assert max(c5) < 2.0 * min(c5)


def test_horizontal_profile_falls_toward_the_lesion(slide: VirtualSlide) -> None:
    def pct(rows: dict[str, float], areas: dict[str, float], lo: float, hi: float) -> float:
        names = [n for n in rows if lo <= float(n.split("_")[1]) < hi]
        return 100.0 * sum(rows[n] for n in names) / sum(areas[n] for n in names)

    for section_id in ("rat03-lesion", "rat04-lesion", "rat05-lesion", "rat06-lesion"):
        table = [r for r in slide.truth_table(section_id) if r.region.startswith("rc_")]
        rows = {r.region: r.axon_area_um2 for r in table}
        areas = {r.region: r.area_um2 for r in table}
        far_rostral = pct(rows, areas, -4500, -2500)
        near_rostral = pct(rows, areas, -1000, 0)
        caudal = pct(rows, areas, 1500, 4500)
        assert far_rostral > near_rostral > caudal > 0.0
    s = np.linspace(-4000, 4000, 81)
    f = horizontal_axon_density(s, "vehicle")
    assert np.all(np.diff(f[s < 0]) <= 0) and np.all(np.diff(f[s >= 0]) <= 0)
    assert np.ptp(horizontal_axon_density(s, "intact")) == 0.0


def test_no_nuclei_or_axons_in_the_lesion_cavity(slide: VirtualSlide) -> None:
    sec = slide.section("rat03-lesion")
    assert sec.lesion_cavity is not None and sec.epicenter_um is not None
    xy = tuple(sec.lesion_cavity.mean(axis=0))
    kw = dict(center_um=xy, pixel_size_um=P10X_UM, shape=(2048, 2048))
    masks = slide.render_truth_labels(**kw, section_id="rat03-lesion")
    cavity = masks["lesion_cavity"]
    assert cavity.sum() * P10X_UM**2 > 0.5e6
    dapi = slide.render(**kw, channel="DAPI", z_um=_focus(slide, xy))
    inner = cavity.copy()
    for shift, axis in [(30, 0), (-30, 0), (30, 1), (-30, 1)]:  # 20 µm inside
        inner &= np.roll(cavity, shift, axis)
    assert dapi[inner].max() < 0.05
    rim = ~cavity & masks["section"] & (np.roll(cavity, 80, 0) | np.roll(cavity, -80, 0))
    assert dapi[rim].mean() > dapi[masks["section"] & ~rim].mean()  # denser nuclei round the cavity
    assert not (masks["axons"] & cavity).any()


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize("channel", ["GFP", "dapi", "", "Cy5"], ids=["GFP", "lowercase", "empty", "Cy5"])
def test_unknown_channel_raises_naming_it(slide: VirtualSlide, channel: str) -> None:
    with pytest.raises(ValueError, match=f"unknown channel '{channel}'"):
        slide.render(
            center_um=(40_000.0, 5_000.0), pixel_size_um=0.65, shape=(8, 8), channel=channel, z_um=0.0
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pixel_size_um": 0.0}, "pixel_size_um"),
        ({"pixel_size_um": float("nan")}, "pixel_size_um"),
        ({"shape": (0, 8)}, "shape"),
        ({"z_um": float("inf")}, "finite"),
        ({"out": np.zeros((8, 8), dtype=np.float64)}, "out"),
        ({"out": np.zeros((8, 9), dtype=np.float32)}, "out"),
    ],
    ids=["zero-pixel", "nan-pixel", "empty-shape", "inf-z", "out-dtype", "out-shape"],
)
def test_bad_render_arguments_raise(slide: VirtualSlide, kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = dict(
        center_um=(40_000.0, 5_000.0), pixel_size_um=0.65, shape=(8, 8), channel="DAPI", z_um=0.0
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        slide.render(**args)  # type: ignore[arg-type]


_GOOD = SectionSpec("s1", "ratX", "vehicle", "C5", "coronal", "left", (30_000.0, 10_000.0), 2.0)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"group": "sham"}, "group"),
        ({"level": "T12"}, "coronal level"),
        ({"level": "lesion"}, "coronal level"),
        ({"orientation": "horizontal"}, "horizontal sections span the lesion"),
        ({"orientation": "sagittal"}, "orientation"),
        ({"injection_side": "both"}, "injection_side"),
        ({"rotation_deg": float("nan")}, "finite"),
    ],
    ids=["group", "level", "coronal-lesion", "horizontal-C5", "sagittal", "side", "nan-rotation"],
)
def test_section_spec_validation(change: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(_GOOD, **change)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        ([_GOOD, dataclasses.replace(_GOOD, section_id="s2", centre_um=(31_000.0, 10_500.0))], "overlap"),
        ([dataclasses.replace(_GOOD, centre_um=(19_000.0, 10_000.0))], "tissue zone"),
        ([_GOOD, _GOOD], "duplicate"),
    ],
    ids=["overlap", "on-label", "duplicate"],
)
def test_make_slide_rejects_bad_layouts(specs: list[SectionSpec], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_slide(specs, seed=1)


def test_generation_is_seeded() -> None:
    specs = [
        _GOOD,
        SectionSpec("h1", "ratY", "treated", "lesion", "horizontal", "right", (45_000.0, 15_000.0), -3.0),
    ]
    a, b, c = make_slide(specs, seed=5), make_slide(specs, seed=5), make_slide(specs, seed=6)
    for sid in ("s1", "h1"):
        assert a.truth_table(sid) == b.truth_table(sid)
        assert a.truth_table(sid) != c.truth_table(sid)
    kw = dict(center_um=(30_000.0, 10_000.0), pixel_size_um=0.65, shape=(128, 128), channel="DAPI", z_um=1.0)
    np.testing.assert_array_equal(a.render(**kw), b.render(**kw))  # type: ignore[arg-type]
    assert len(demo_specs(1)) == len(demo_specs(2))


def test_unknown_section_raises_naming_it(slide: VirtualSlide) -> None:
    with pytest.raises(KeyError, match="rat99-C5"):
        slide.truth_table("rat99-C5")


# ------------------------------------------------------------ beads and focus bumps


def test_bead_area_lies_on_glass_and_holds_mostly_isolated_beads(slide: VirtualSlide) -> None:
    beads = slide.beads()
    x0, y0, x1, y1 = BEAD_AREA_UM
    assert beads.area_um == BEAD_AREA_UM
    assert 0.1 <= beads.diameter_um <= 0.2
    assert len(beads.xy_um) > 5000
    inside = (
        (beads.xy_um[:, 0] > x0)
        & (beads.xy_um[:, 0] < x1)
        & (beads.xy_um[:, 1] > y0)
        & (beads.xy_um[:, 1] < y1)
    )
    assert inside.all()
    assert beads.isolated.mean() > 0.8
    assert 0 <= x0 and x1 <= SLIDE_SIZE_UM[0] and 0 <= y0 and y1 <= SLIDE_SIZE_UM[1]
    for section in slide.sections:
        b = section.bbox_um
        assert b[2] + 500 < x0 or b[0] - 500 > x1 or b[3] + 500 < y0 or b[1] - 500 > y1, section.section_id


@pytest.mark.parametrize("pixel_size_um", [1.625, 0.65, 0.325], ids=["4x", "10x", "20x"])
def test_beads_render_as_spots_of_the_slide_blur_at_their_positions(
    slide: VirtualSlide, pixel_size_um: float
) -> None:
    p = pixel_size_um
    beads = slide.beads()
    x0, y0, x1, y1 = BEAD_AREA_UM
    xy = ((x0 + x1) / 2, (y0 + y1) / 2)
    z = _focus(slide, xy)
    h = w = 288
    img = slide.render(center_um=xy, pixel_size_um=p, shape=(h, w), channel="tdTomato", z_um=z)
    dapi = slide.render(center_um=xy, pixel_size_um=p, shape=(h, w), channel="DAPI", z_um=z)
    assert dapi.max() == 0.0  # beads are seen in the tracer channel only
    cx = xy[0] + (np.arange(w) + 0.5 - w / 2) * p
    cy = xy[1] + (np.arange(h) + 0.5 - h / 2) * p
    # the slide's documented blur: a point's soft edge ends at r_out (see _slide_render)
    sigma = 0.45 * p
    sigma_tot = math.hypot(sigma, p / math.sqrt(12.0))
    r_out = math.hypot(beads.diameter_um / 2, sigma) + 1.25 * sigma_tot
    margin = r_out + 4 * p
    sel = beads.isolated & (np.abs(beads.xy_um[:, 0] - xy[0]) < w / 2 * p - margin)
    sel &= np.abs(beads.xy_um[:, 1] - xy[1]) < h / 2 * p - margin
    assert sel.sum() >= 5
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    for bx, by in beads.xy_um[sel]:
        d = np.hypot(xx - bx, yy - by)
        near = d < r_out + 2 * p
        spot = np.where(near, img, 0.0)
        peak = np.unravel_index(int(np.argmax(spot)), img.shape)
        assert d[peak] <= 0.75 * p  # brightest pixel on the bead
        lit = near & (img > 1e-3 * img[peak])
        assert r_out - 1.5 * p < d[lit].max() <= r_out + 0.01 * p  # as wide as the blur (float32)


def test_focus_bumps_are_off_by_default_and_deform_the_focal_surface_when_on(slide: VirtualSlide) -> None:
    assert not slide.focus_bumps_on
    bumps = slide.focus_bumps
    assert len(bumps) >= 5 and {b.kind for b in bumps} == {"bubble", "fold"}
    on = slide.with_focus_bumps(True)
    assert on.focus_bumps_on and on.focus_bumps == bumps
    assert on.with_focus_bumps(False).focal_plane_z_um(1.0, 2.0) == slide.focal_plane_z_um(1.0, 2.0)
    ids = {s.section_id for s in slide.sections}
    for b in bumps:
        assert b.section_id in ids
        assert 3.0 <= abs(b.amplitude_um) <= 8.0
        assert 300.0 <= 2.355 * b.sigma_major_um <= 1000.0  # full width at half maximum
        lift = on.focal_plane_z_um(b.x_um, b.y_um) - slide.focal_plane_z_um(b.x_um, b.y_um)
        assert lift == pytest.approx(b.amplitude_um, abs=0.05 * abs(b.amplitude_um))
        assert Path(slide.section(b.section_id).outline).contains_point((b.x_um, b.y_um))
    # a bump is local: 4 mm away nothing changes
    b = bumps[0]
    far = (b.x_um + 4000.0, b.y_um)
    assert on.focal_plane_z_um(*far) == pytest.approx(float(slide.focal_plane_z_um(*far)), abs=1e-6)


def test_a_bump_blurs_what_the_smooth_focus_would_see_sharp(slide: VirtualSlide) -> None:
    on = slide.with_focus_bumps(True)
    b = max(slide.focus_bumps, key=lambda b: abs(b.amplitude_um))
    xy = (b.x_um, b.y_um)
    z_smooth = _focus(slide, xy)
    kw: dict[str, object] = dict(center_um=xy, pixel_size_um=P10X_UM, shape=(256, 256), channel="DAPI")
    flat = _sharpness(slide.render(**kw, z_um=z_smooth))  # type: ignore[arg-type]
    missed = _sharpness(on.render(**kw, z_um=z_smooth))  # type: ignore[arg-type]
    refocused = _sharpness(on.render(**kw, z_um=z_smooth + b.amplitude_um))  # type: ignore[arg-type]
    assert missed < 0.5 * flat
    assert refocused == pytest.approx(flat, rel=0.1)


def test_frames_agree_exactly_with_bumps_on(slide: VirtualSlide) -> None:
    on = slide.with_focus_bumps(True)
    b = on.focus_bumps[0]
    p, h, w = P10X_UM, 200, 240
    xy = (b.x_um, b.y_um)
    z = _focus(slide, xy)
    a = on.render(center_um=xy, pixel_size_um=p, shape=(h, w), channel="tdTomato", z_um=z)
    c = on.render(
        center_um=(xy[0] + 31 * p, xy[1] - 17 * p), pixel_size_um=p, shape=(h, w), channel="tdTomato", z_um=z
    )
    np.testing.assert_array_equal(a[: h - 17, 31:], c[17:, : w - 31])
