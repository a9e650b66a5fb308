"""Model B's slide: geometry, labelled objects and ground truth (computed from geometry)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon, box

from acquisition.demo.model_b import objects as ob
from acquisition.demo.model_b.slide import (
    BEAD_AREA_UM,
    SLIDE_SIZE_UM,
    TISSUE_ZONE_UM,
    ModelBSlide,
    SlideParameters,
    horizontal_density,
    make_model_b_slide,
    model_b_slide,
    model_b_specs,
)
from acquisition.demo.slide import SectionSpec

pytestmark = pytest.mark.filterwarnings("error")

P10X_UM = 0.454


@pytest.fixture(scope="module")
def slide() -> ModelBSlide:
    return model_b_slide()


def _focus(slide: ModelBSlide, xy: tuple[float, float]) -> float:
    return float(slide.focal_plane_z_um(*xy))


# ------------------------------------------------------------------ strips


def _disc(r: float, n: int = 256) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([r * np.cos(t), r * np.sin(t)])


def _staircase_disc_area(r: float) -> float:
    """Area of a disc cut into 0.2 µm rows at their mid-lines (rows anchored at floor(−r/h))."""
    h = ob.STRIP_UM
    j0 = math.floor(-r / h)
    mids = (j0 + np.arange(math.ceil(r / h) - j0) + 0.5) * h
    return float(np.sum(2.0 * np.sqrt(np.maximum(r * r - mids * mids, 0.0))) * h)


def _u_shape() -> np.ndarray:
    # a U: two 1 µm arms 3 µm apart joined at the bottom (y grows downward)
    return np.array([[0, 0], [1, 0], [1, 3], [3, 3], [3, 0], [4, 0], [4, 4], [0, 4]], dtype=float) - 2.0


@pytest.mark.parametrize(
    ("polygon", "area_um2", "rel", "max_chords"),
    [
        (np.array([[-1.5, -1.0], [1.5, -1.0], [1.5, 1.0], [-1.5, 1.0]]), 6.0, 1e-12, 1),
        (_disc(2.0), _staircase_disc_area(2.0), 0.002, 1),
        (_disc(0.5), _staircase_disc_area(0.5), 0.002, 1),
        (_u_shape(), 10.0, 1e-12, 2),
    ],
    ids=["rectangle", "disc-2um", "disc-0.5um", "u-shape"],
)
def test_strips_cut_polygons_into_exact_rows(
    polygon: np.ndarray, area_um2: float, rel: float, max_chords: int
) -> None:
    centre = np.array([[1234.5, 678.9]])
    st = ob.strips_from_polygons(centre, polygon[None])
    assert st.area_um2(1)[0] == pytest.approx(area_um2, rel=rel)
    assert np.allclose(st.y0 - st.y0[0], np.round((st.y0 - st.y0[0]) / ob.STRIP_UM) * ob.STRIP_UM)
    # rows first (one per row, in order), then extra chords
    rows = st.row[: st.n_rows[0]]
    np.testing.assert_array_equal(rows, np.arange(st.n_rows[0]))
    assert np.bincount(st.row, minlength=st.n_rows[0]).max() == max_chords
    np.testing.assert_allclose(
        st.centroid_um(1)[0], centre[0] + Polygon(polygon).centroid.coords[0], atol=0.06
    )


@pytest.mark.parametrize(
    ("a0", "a1", "b0", "b1", "distance"),
    [
        ((0, 0), (2, 0), (0, 1), (2, 1), 1.0),
        ((0, 0), (2, 0), (3, 0), (4, 0), 1.0),
        ((0, 0), (2, 0), (1, -1), (1, 1), 0.0),
        ((0, 0), (0, 0), (3, 4), (3, 4), 5.0),
        ((0, 0), (4, 0), (2, 3), (2, 3), 3.0),
        ((2, 3), (2, 3), (0, 0), (4, 0), 3.0),
        ((0, 0), (1, 1), (3, 0), (5, 0), math.sqrt(5.0)),
    ],
    ids=["parallel", "collinear", "crossing", "two-points", "point-right", "point-left", "skew"],
)
def test_segment_distance_known_answers(a0, a1, b0, b1, distance: float) -> None:
    args = [np.array([v], dtype=float) for v in (a0, a1, b0, b1)]
    assert ob.segment_distance(*args)[0] == pytest.approx(distance)


# ------------------------------------------------------------------ layout


def test_layout_and_anatomy_of_the_slide(slide: ModelBSlide) -> None:
    sections = slide.sections
    coronal = [s for s in sections if s.spec.orientation == "coronal"]
    horizontal = [s for s in sections if s.spec.orientation == "horizontal"]
    assert {s.spec.level for s in coronal} == {"C5", "Th7", "L2"}
    assert {s.spec.group for s in sections} == {"intact", "vehicle", "treated"}
    assert {s.spec.injection_side for s in sections} == {"left", "right"}
    assert any(s.lesion_cavity is not None for s in horizontal)
    assert any(s.lesion_cavity is None for s in horizontal)
    boxes = np.array([s.bbox_um for s in sections])
    zx0, zy0, zx1, zy1 = TISSUE_ZONE_UM
    assert (boxes[:, 0] >= zx0).all() and (boxes[:, 2] <= zx1).all()
    assert (boxes[:, 1] >= zy0).all() and (boxes[:, 3] <= zy1).all()
    assert zx1 <= SLIDE_SIZE_UM[0] and zy1 <= SLIDE_SIZE_UM[1]
    beads = box(*BEAD_AREA_UM)
    for i, a in enumerate(sections):
        assert box(*a.bbox_um).distance(beads) >= 500.0
        for b in sections[i + 1 :]:
            assert box(*a.bbox_um).distance(box(*b.bbox_um)) >= 1000.0, (a.section_id, b.section_id)
    for s in coronal:
        outline = Polygon(s.outline)
        gray = Polygon(s.gray_matter[0])
        assert s.rubrospinal_territory is not None and s.central_canal is not None
        assert outline.buffer(-40.0).contains(gray)
        assert gray.contains(Polygon(s.central_canal))
        rst = Polygon(s.rubrospinal_territory)
        assert outline.contains(rst) and rst.disjoint(gray)
        assert 0.12 <= gray.area / outline.area <= 0.4
        # the territory lies on the tracer side, dorsal of the canal's horizontal + a little
        c = np.asarray(rst.centroid.coords[0]) - s.midline_point_um
        side = "right" if c @ np.asarray(s.right_direction) > 0 else "left"
        assert side == s.spec.tracer_side
        assert c @ np.asarray(s.ventral_direction) < 0
    x0, _, _, y1 = slide.tissue_bbox_um()
    assert x0 == boxes[:, 0].min() and y1 == boxes[:, 3].max()


@pytest.mark.parametrize(
    ("level", "width_um", "height_um"),
    [("C5", 3450, 2350), ("Th7", 2450, 1900), ("L2", 2850, 2400)],
    ids=["C5", "Th7", "L2"],
)
def test_coronal_sizes(slide: ModelBSlide, level: str, width_um: float, height_um: float) -> None:
    for s in slide.sections:
        if s.spec.level != level:
            continue
        local = (s.outline - s.spec.centre_um) @ np.array([s.right_direction, s.ventral_direction]).T
        assert np.ptp(local[:, 0]) == pytest.approx(width_um, rel=0.02)
        assert np.ptp(local[:, 1]) == pytest.approx(height_um, rel=0.02)


# -------------------------------------------------------------------- truth


def _tiles(bbox: tuple[float, float, float, float], tile_px: int, p: float) -> list[tuple[float, float]]:
    span = tile_px * p
    nx = math.ceil((bbox[2] - bbox[0]) / span)
    ny = math.ceil((bbox[3] - bbox[1]) / span)
    return [(bbox[0] + (i + 0.5) * span, bbox[1] + (j + 0.5) * span) for j in range(ny) for i in range(nx)]


def _mask_areas(
    slide: ModelBSlide, section_id: str, bbox: tuple[float, float, float, float], names: list[str]
) -> tuple[dict[str, float], dict[str, float]]:
    p, tile = P10X_UM, 2048
    area: dict[str, float] = dict.fromkeys(names, 0.0)
    axon: dict[str, float] = dict.fromkeys(names, 0.0)
    for xy in _tiles(bbox, tile, p):
        masks = slide.render_truth_labels(
            center_um=xy, pixel_size_um=p, shape=(tile, tile), section_id=section_id
        )
        for name in names:
            area[name] += int(masks[name].sum()) * p * p
            axon[name] += int((masks[name] & masks["axons"]).sum()) * p * p
    return area, axon


@pytest.mark.slow
def test_coronal_truth_masks_match_geometric_areas(slide: ModelBSlide) -> None:
    section_id = "rat14-Th7"
    names = list(slide.section(section_id).region_names)
    area, axon = _mask_areas(slide, section_id, slide.section_bbox_um(section_id), names)
    checked = 0
    for row in slide.truth_table(section_id):
        assert area[row.region] == pytest.approx(row.area_um2, rel=0.01), row.region
        if row.n_axon_objects >= 300:
            assert axon[row.region] == pytest.approx(row.axon_area_um2, rel=0.01), row.region
            checked += 1
    assert checked >= 4


@pytest.mark.slow
def test_horizontal_truth_masks_match_geometric_areas(slide: ModelBSlide) -> None:
    section_id = "rat15-lesion"
    sec = slide.section(section_id)
    assert sec.epicenter_um is not None and sec.rostral_direction is not None
    assert sec.rostral_direction[0] < -0.99  # rostral is toward -x
    rostral = [r for r in slide.truth_table(section_id) if r.region.startswith("rc_-")]
    assert len(rostral) >= 8
    b = sec.bbox_um
    area, axon = _mask_areas(
        slide, section_id, (b[0], b[1], sec.epicenter_um[0] + 600.0, b[3]), [r.region for r in rostral]
    )
    checked = 0
    for row in rostral:
        assert area[row.region] == pytest.approx(row.area_um2, rel=0.01), row.region
        if row.axon_area_um2 >= 3000.0:
            assert axon[row.region] == pytest.approx(row.axon_area_um2, rel=0.01), row.region
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("section_id", ["rat11-C5", "rat14-Th7", "rat16-L2", "rat13-lesion"])
def test_truth_table_is_consistent(slide: ModelBSlide, section_id: str) -> None:
    section = slide.section(section_id)
    rows = {r.region: r for r in slide.truth_table(section_id)}
    assert tuple(rows) == section.region_names
    total = rows["section"]
    pairs = [("white_matter", "gray_matter"), ("left", "right")]
    if section.spec.orientation == "coronal":
        pairs.append(("dorsal", "ventral"))
    for a, b in pairs:
        assert rows[a].area_um2 + rows[b].area_um2 == pytest.approx(total.area_um2, rel=1e-9)
        assert rows[a].axon_area_um2 + rows[b].axon_area_um2 == pytest.approx(total.axon_area_um2)
        assert rows[a].n_axon_objects + rows[b].n_axon_objects == total.n_axon_objects
    bins = [r for name, r in rows.items() if name.startswith("rc_")]
    if bins:
        assert sum(r.area_um2 for r in bins) == pytest.approx(total.area_um2, rel=1e-9)
        assert sum(r.axon_area_um2 for r in bins) == pytest.approx(total.axon_area_um2)
    outline = Polygon(section.outline)
    hole = section.central_canal if section.central_canal is not None else section.lesion_cavity
    tissue = outline.difference(Polygon(hole)) if hole is not None else outline
    assert total.area_um2 == pytest.approx(tissue.area, rel=1e-6)
    for r in rows.values():
        assert r.area_um2 > 0
        assert r.pct_axonal_area == pytest.approx(100 * r.axon_area_um2 / r.area_um2)
    objects = slide.axon_objects(section_id)
    assert objects.area_um2.sum() == pytest.approx(total.axon_area_um2)


def _object_polygons(objects) -> list:
    boxes = shapely.box(
        objects.strip_x0_um,
        objects.strip_y0_um,
        objects.strip_x1_um,
        objects.strip_y0_um + objects.strip_height_um,
    )
    keep = objects.strip_x1_um > objects.strip_x0_um
    order = objects.strip_object[keep]
    starts = np.flatnonzero(np.r_[True, order[1:] != order[:-1]])
    groups = np.split(boxes[keep], starts[1:])
    return [shapely.union_all(g) for g in groups]


@pytest.mark.slow
@pytest.mark.parametrize("section_id", ["rat12-C5", "rat15-lesion"], ids=["coronal", "horizontal"])
def test_objects_are_disjoint_and_each_inside_one_region(slide: ModelBSlide, section_id: str) -> None:
    sec = slide.section(section_id)
    obj = slide.axon_objects(section_id)
    n = len(obj.area_um2)
    assert n > 500
    polys = _object_polygons(obj)
    assert len(polys) == n
    tree = shapely.STRtree(polys)
    pairs = tree.query(polys, predicate="intersects")
    assert (pairs[0] == pairs[1]).all()  # disjoint: each object touches itself only
    outline = Polygon(sec.outline)
    hole = sec.central_canal if sec.central_canal is not None else sec.lesion_cavity
    tissue = outline.difference(Polygon(hole)) if hole is not None else outline
    gray = Polygon(sec.gray_matter[0])
    geoms = shapely.GeometryCollection(polys)
    assert tissue.contains(geoms)
    in_gray = shapely.within(polys, gray)
    np.testing.assert_array_equal(in_gray, obj.tissue == "gray_matter")
    assert shapely.disjoint(np.asarray(polys)[~in_gray], gray).all()
    if sec.rubrospinal_territory is not None:
        rst = Polygon(sec.rubrospinal_territory)
        in_rst = shapely.within(polys, rst)
        np.testing.assert_array_equal(in_rst, obj.tissue == "rubrospinal_territory")
        assert shapely.disjoint(np.asarray(polys)[~in_rst], rst).all()
    # sides and zones: every strip corner on the labelled side of the split lines
    corners = np.concatenate(
        [
            np.column_stack([obj.strip_x0_um, obj.strip_y0_um]),
            np.column_stack([obj.strip_x1_um, obj.strip_y0_um + obj.strip_height_um]),
        ]
    )
    owner = np.concatenate([obj.strip_object, obj.strip_object])
    side = (corners - sec.midline_point_um) @ np.asarray(sec.right_direction)
    np.testing.assert_array_equal(np.where(side > 0, "right", "left"), obj.side[owner])
    if sec.ventral_direction is not None:
        dv = (corners - sec.midline_point_um) @ np.asarray(sec.ventral_direction)
        np.testing.assert_array_equal(np.where(dv > 0, "ventral", "dorsal"), obj.zone[owner])
    else:
        assert sec.epicenter_um is not None and sec.rostral_direction is not None
        s = -(corners - sec.epicenter_um) @ np.asarray(sec.rostral_direction)
        lo = np.floor(s / 500.0) * 500.0
        np.testing.assert_array_equal(np.array([f"rc_{int(a)}_{int(a) + 500}" for a in lo]), obj.zone[owner])


def test_object_sizes_and_shapes(slide: ModelBSlide) -> None:
    obj = slide.axon_objects("rat11-C5")
    n = len(obj.area_um2)
    assert {"blob", "elongated", "fibre", "bouton"} <= set(obj.kind)
    np.testing.assert_allclose(obj.equivalent_diameter_um, 2 * np.sqrt(obj.area_um2 / np.pi))
    blobs = obj.kind == "blob"
    assert obj.equivalent_diameter_um[blobs].min() >= 0.8
    assert obj.equivalent_diameter_um[blobs].max() <= 5.05
    # reach of each object from its centroid (strip corners)
    h = obj.strip_height_um
    reach = np.zeros(n)
    real = obj.strip_x1_um > obj.strip_x0_um
    cx, cy = obj.xy_um[obj.strip_object].T
    for x in (obj.strip_x0_um, obj.strip_x1_um):
        for dy in (0.0, h):
            d = np.hypot(x - cx, obj.strip_y0_um + dy - cy)
            np.maximum.at(reach, obj.strip_object[real], d[real])
    elongated = obj.kind == "elongated"
    assert reach[elongated].max() <= 2.5 + h  # at most 5 µm long
    assert np.median(obj.major_axis_um[elongated] / obj.minor_axis_um[elongated]) > 1.5
    assert (obj.minor_axis_um <= obj.major_axis_um + 1e-9).all()
    fibres = obj.kind == "fibre"
    assert np.median(obj.major_axis_um[fibres]) > 3 * np.median(obj.minor_axis_um[fibres])
    assert reach[fibres].max() > 8.0


# ------------------------------------------------------------------ anatomy


@pytest.mark.parametrize("section_id", ["rat11-C5", "rat12-Th7"], ids=["left-inj", "right-inj"])
def test_axons_only_on_the_contralateral_side(slide: ModelBSlide, section_id: str) -> None:
    sec = slide.section(section_id)
    b = sec.bbox_um
    p = 1.135
    shape = (int((b[3] - b[1]) / p) + 8, int((b[2] - b[0]) / p) + 8)
    xy = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    img = slide.render(center_um=xy, pixel_size_um=p, shape=shape, channel="tdTomato", z_um=_focus(slide, xy))
    masks = slide.render_truth_labels(center_um=xy, pixel_size_um=p, shape=shape, section_id=section_id)
    contra = sec.spec.tracer_side
    ipsi = "left" if contra == "right" else "right"
    rows = {r.region: r for r in slide.truth_table(section_id)}
    assert rows[ipsi].axon_area_um2 == 0.0
    assert rows["rubrospinal_territory"].pct_axonal_area > 5 * rows["section"].pct_axonal_area
    bright = img > 1.0  # objects; tissue autofluorescence is ~0.03 here (4x)
    assert (bright & masks[ipsi]).sum() == 0
    assert (bright & masks[contra]).sum() > 100
    assert img[masks["axons"]].mean() > 5 * img[masks["section"] & ~masks["axons"]].mean()


@pytest.mark.slow
def test_groups_differ_below_the_lesion_and_animals_vary(slide: ModelBSlide) -> None:
    def rst_pct(section_id: str) -> float:
        return {r.region: r for r in slide.truth_table(section_id)}["rubrospinal_territory"].pct_axonal_area

    intact = np.mean([rst_pct("rat11-L2"), rst_pct("rat12-L2")])
    vehicle = np.mean([rst_pct("rat13-L2"), rst_pct("rat14-L2")])
    treated = np.mean([rst_pct("rat15-L2"), rst_pct("rat16-L2")])
    assert vehicle < treated < intact
    assert vehicle < 0.3 * intact
    c5 = [rst_pct(f"rat1{k}-C5") for k in range(1, 7)]
    assert max(c5) < 2.0 * min(c5)  # rostral of the lesion the groups look alike
    assert len({round(v, 3) for v in c5}) == 6  # animals differ


def test_horizontal_profile_falls_across_the_epicenter(slide: ModelBSlide) -> None:
    for section_id in ("rat13-lesion", "rat15-lesion"):
        table = [r for r in slide.truth_table(section_id) if r.region.startswith("rc_")]

        def pct(lo: float, hi: float, table=table) -> float:
            rows = [r for r in table if lo <= float(r.region.split("_")[1]) < hi]
            return 100.0 * sum(r.axon_area_um2 for r in rows) / sum(r.area_um2 for r in rows)

        assert pct(-4500, -2000) > 2.0 * pct(1500, 4500) > 0.0
    s = np.linspace(-4000, 4000, 81)
    assert np.all(np.diff(horizontal_density(s, "vehicle")) <= 0)
    assert np.ptp(horizontal_density(s, "intact")) == 0.0
    assert horizontal_density(4000.0, "vehicle") < horizontal_density(4000.0, "treated")


def test_no_nuclei_or_axons_in_the_lesion_cavity(slide: ModelBSlide) -> None:
    sec = slide.section("rat13-lesion")
    assert sec.lesion_cavity is not None
    xy = tuple(Polygon(sec.lesion_cavity).centroid.coords[0])
    p = 1.135
    kw = dict(center_um=xy, pixel_size_um=p, shape=(1024, 1024))
    masks = slide.render_truth_labels(**kw, section_id="rat13-lesion")  # type: ignore[arg-type]
    cavity = masks["lesion_cavity"]
    assert cavity.sum() * p**2 > 0.2e6
    dapi = slide.render(**kw, channel="DAPI", z_um=_focus(slide, xy))  # type: ignore[arg-type]
    inner = cavity.copy()
    for shift, axis in [(24, 0), (-24, 0), (24, 1), (-24, 1)]:  # 27 µm inside the cavity
        inner &= np.roll(cavity, shift, axis)
    assert dapi[inner].max() < 0.02 * dapi[masks["section"]].mean()
    assert not (masks["axons"] & cavity).any()


def _dapi_gray_white_ratio(slide, section_id: str) -> float:
    """Mean DAPI of gray over white matter, in focus at 4x, away from edges and the canal."""
    sec = slide.section(section_id)
    b = sec.bbox_um
    p = 1.135
    shape = (int((b[3] - b[1]) / p) + 16, int((b[2] - b[0]) / p) + 16)
    xy = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    img = slide.render(center_um=xy, pixel_size_um=p, shape=shape, channel="DAPI", z_um=_focus(slide, xy))
    outline = Polygon(sec.outline).buffer(-25.0)
    gray = Polygon(sec.gray_matter[0])
    canal = Polygon(sec.central_canal).buffer(120.0)
    gx = xy[0] + (np.arange(shape[1]) + 0.5 - shape[1] / 2) * p
    gy = xy[1] + (np.arange(shape[0]) + 0.5 - shape[0] / 2) * p
    xx, yy = np.meshgrid(gx, gy)
    in_gray = shapely.contains_xy(gray.buffer(-25.0).difference(canal), xx, yy)
    in_white = shapely.contains_xy(outline.difference(gray.buffer(25.0)), xx, yy)
    return float(img[in_gray].mean() / img[in_white].mean())


@pytest.mark.slow
def test_dapi_gray_white_contrast_is_a_parameter_and_differs_from_model_a(slide: ModelBSlide) -> None:
    from acquisition.demo.slide import demo_slide

    section_id = "rat14-Th7"
    default = _dapi_gray_white_ratio(slide, section_id)
    assert default == pytest.approx(SlideParameters().dapi_gray_white_contrast, rel=0.12)
    strong = make_model_b_slide(
        model_b_specs(), seed=slide.seed, parameters=SlideParameters(dapi_gray_white_contrast=2.2)
    )
    assert _dapi_gray_white_ratio(strong, section_id) == pytest.approx(2.2, rel=0.12)
    model_a = _dapi_gray_white_ratio(demo_slide(), "rat04-Th7")
    assert model_a > 1.3 * default


# ------------------------------------------------------------------ bad input


_GOOD = SectionSpec("s1", "ratX", "vehicle", "C5", "coronal", "left", (30_000.0, 10_000.0), 2.0)


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        (
            [_GOOD, dataclasses.replace(_GOOD, section_id="s2", centre_um=(32_500.0, 10_500.0))],
            "closer than 1 mm",
        ),
        ([dataclasses.replace(_GOOD, centre_um=(17_000.0, 10_000.0))], "tissue zone"),
        ([dataclasses.replace(_GOOD, centre_um=(62_000.0, 21_000.0))], "bead area"),
        ([_GOOD, _GOOD], "duplicate"),
    ],
    ids=["too-close", "on-label", "on-beads", "duplicate"],
)
def test_make_slide_rejects_bad_layouts(specs: list[SectionSpec], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_model_b_slide(specs, seed=1)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"dapi_gray_white_contrast": 0.1}, "dapi_gray_white_contrast"),
        ({"object_depth_range_um": -1.0}, "object_depth_range_um"),
        ({"nucleus_depth_range_um": float("nan")}, "nucleus_depth_range_um"),
    ],
    ids=["contrast", "object-depth", "nucleus-depth"],
)
def test_slide_parameters_are_validated(change: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SlideParameters(**change)  # type: ignore[arg-type]


@pytest.mark.slow
def test_generation_is_seeded() -> None:
    specs = [
        _GOOD,
        SectionSpec("h1", "ratY", "treated", "lesion", "horizontal", "right", (45_000.0, 15_000.0), -2.0),
    ]
    a, b, c = (
        make_model_b_slide(specs, seed=5),
        make_model_b_slide(specs, seed=5),
        make_model_b_slide(specs, seed=6),
    )
    for sid in ("s1", "h1"):
        assert a.truth_table(sid) == b.truth_table(sid)
        assert a.truth_table(sid) != c.truth_table(sid)
    kw = dict(center_um=(30_000.0, 10_000.0), pixel_size_um=0.454, shape=(96, 96), channel="DAPI", z_um=1.0)
    np.testing.assert_array_equal(a.render(**kw), b.render(**kw))  # type: ignore[arg-type]


def test_unknown_section_raises_naming_it(slide: ModelBSlide) -> None:
    with pytest.raises(KeyError, match="rat99-C5"):
        slide.truth_table("rat99-C5")


# --------------------------------------------------- one interface, two models


@pytest.mark.parametrize("model", ["A", "B"])
def test_both_models_share_the_truth_interface(slide: ModelBSlide, model: str) -> None:
    from acquisition.demo.slide import demo_slide

    sl = demo_slide() if model == "A" else slide
    first = sl.sections[0]
    assert sl.section(first.section_id) is first
    for attr in ("outline", "gray_matter", "bbox_um", "region_names", "right_direction", "midline_point_um"):
        assert getattr(first, attr) is not None
    rows = sl.truth_table(first.section_id)
    assert [r.region for r in rows] == list(first.region_names)
    for field in ("area_um2", "axon_area_um2", "pct_axonal_area", "n_axon_objects", "mean_tracer_photons"):
        assert all(math.isfinite(getattr(r, field)) for r in rows)
    obj = sl.axon_objects(first.section_id)
    n = len(obj.area_um2)
    assert obj.xy_um.shape == (n, 2) and obj.equivalent_diameter_um.shape == (n,)
    assert len(obj.tissue) == len(obj.side) == len(obj.zone) == n
    assert Polygon(first.outline).contains(shapely.MultiPoint(obj.xy_um))
    b = sl.section_bbox_um(first.section_id)
    assert sl.tissue_bbox_um()[0] <= b[0]
    xy = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    masks = sl.render_truth_labels(
        center_um=xy, pixel_size_um=2.0, shape=(64, 64), section_id=first.section_id
    )
    assert set(first.region_names) | {"axons"} <= set(masks)
    img = sl.render(center_um=xy, pixel_size_um=2.0, shape=(64, 64), channel="DAPI", z_um=_focus(sl, xy))
    assert img.shape == (64, 64) and img.dtype == np.float32
    beads = sl.beads()
    assert len(beads.xy_um) > 1000 and 0.1 <= beads.diameter_um <= 0.2
    assert len(sl.focus_bumps) > 0 and sl.with_focus_bumps(True).focus_bumps_on
