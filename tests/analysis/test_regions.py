"""Anatomical regions from the anatomy mosaic (analysis.regions) vs the demo slide's truth."""

from __future__ import annotations

import numpy as np
import pytest

from acquisition.demo.slide import demo_slide
from analysis.mosaic import SectionMosaic
from analysis.regions import (
    SectionRegions,
    gray_matter_mask,
    rasterize_polygon_um,
    section_regions,
    tissue_mask,
)

P_UM = 3.9  # mosaic pixel size
MARGIN_UM = 200.0


@pytest.fixture(scope="module")
def slide():
    return demo_slide()


def camera(rate: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera counts of a photon-rate image: 20 ms, QE 0.8, gain 0.5 e/ADU, offset 100."""
    return (rng.poisson(rate * 20.0 * 0.8) / 0.5 + 100.0).astype(np.float32)


def section_frame(slide, section_id: str, p: float = P_UM, seed: int = 0):
    """One noisy DAPI frame rendered straight at mosaic resolution, its origin and truth."""
    x0, y0, x1, y1 = slide.section_bbox_um(section_id)
    x0, y0, x1, y1 = x0 - MARGIN_UM, y0 - MARGIN_UM, x1 + MARGIN_UM, y1 + MARGIN_UM
    w, h = int(np.ceil((x1 - x0) / p)), int(np.ceil((y1 - y0) / p))
    c = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
    rate = slide.render(
        center_um=c, pixel_size_um=p, shape=(h, w), channel="DAPI", z_um=float(slide.focal_plane_z_um(*c))
    )
    truth = slide.render_truth_labels(center_um=c, pixel_size_um=p, shape=(h, w), section_id=section_id)
    origin = (c[0] - w * p / 2.0, c[1] - h * p / 2.0)
    return camera(rate, np.random.default_rng(seed)), origin, truth


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


def centroid_um(mask: np.ndarray, origin, p: float = P_UM) -> np.ndarray:
    r, c = np.nonzero(mask)
    return np.array([origin[0] + (c.mean() + 0.5) * p, origin[1] + (r.mean() + 0.5) * p])


def regions_of(slide, section_id: str, **kw) -> tuple[SectionRegions, dict, tuple]:
    img, origin, truth = section_frame(slide, section_id)
    spec = slide.section(section_id).spec
    reg = section_regions(
        img, origin_um=origin, pixel_size_um=P_UM, orientation=spec.orientation,
        injection_side=spec.injection_side, **kw,
    )  # fmt: skip
    return reg, truth, origin


# ------------------------------------------------------------------ coronal

CORONAL = ["rat03-C5", "rat02-Th7", "rat05-L2", "rat06-C5"]


@pytest.mark.parametrize("section_id", CORONAL)
def test_coronal_regions_match_truth(slide, section_id):
    reg, truth, _ = regions_of(slide, section_id)
    sec = slide.section(section_id)
    assert set(sec.region_names) <= set(reg.masks)
    assert dice(reg.masks["section"], truth["section"]) >= 0.95
    assert dice(reg.masks["gray_matter"], truth["gray_matter"]) >= 0.9
    assert dice(reg.masks["white_matter"], truth["white_matter"]) >= 0.9
    for half in ("left", "right", "dorsal", "ventral"):
        assert dice(reg.masks[half], truth[half]) >= 0.95, half
    # the section's rotation is estimated, not assumed to be 0
    assert abs(reg.axes.rotation_deg - sec.spec.rotation_deg) < 1.5
    assert np.dot(reg.axes.right_direction, sec.right_direction) > 0.999
    assert np.dot(reg.axes.ventral_direction, sec.ventral_direction) > 0.999
    # central canal found: the midline point is the canal centre
    assert np.hypot(*np.subtract(reg.midline_point_um, sec.midline_point_um)) < 20.0


@pytest.mark.parametrize("section_id", CORONAL)
def test_rubrospinal_territory_placed_contralateral(slide, section_id):
    reg, truth, origin = regions_of(slide, section_id)
    sec = slide.section(section_id)
    rst = reg.masks["rubrospinal_territory"]
    got = centroid_um(rst, origin)
    want = centroid_um(truth["rubrospinal_territory"], origin)
    assert np.hypot(*(got - want)) < 50.0
    # on the side contralateral to the injection, wholly in white matter
    tracer = sec.spec.tracer_side
    assert tracer != sec.spec.injection_side
    assert (rst & ~reg.masks[tracer]).sum() == 0
    assert (rst & reg.masks["gray_matter"]).sum() == 0
    side = np.dot(got - np.asarray(sec.midline_point_um), sec.right_direction)
    assert (side > 0) == (tracer == "right")
    assert 0.8 < rst.sum() / truth["rubrospinal_territory"].sum() < 1.25


# ------------------------------------------------------------------ horizontal


def check_bins(reg: SectionRegions, truth: dict, origin, rostral) -> int:
    """Compare every truth bin with >= 100 px to ours along the rostral axis; count them."""
    n = 0
    for name, mask in truth.items():
        if not name.startswith("rc_") or mask.sum() < 100:
            continue
        assert name in reg.masks, name
        d = np.dot(centroid_um(mask, origin) - centroid_um(reg.masks[name], origin), rostral)
        assert abs(d) < 50.0, (name, d)
        n += 1
    return n


@pytest.mark.slow
@pytest.mark.parametrize("section_id", ["rat04-lesion", "rat05-lesion"])
def test_horizontal_lesion_epicenter_and_bins(slide, section_id):
    reg, truth, origin = regions_of(slide, section_id)
    sec = slide.section(section_id)
    assert dice(reg.masks["section"], truth["section"]) >= 0.95
    assert dice(reg.masks["gray_matter"], truth["gray_matter"]) >= 0.9
    assert dice(reg.masks["white_matter"], truth["white_matter"]) >= 0.9
    for half in ("left", "right"):
        assert dice(reg.masks[half], truth[half]) >= 0.95, half
    assert reg.epicenter_source == "cavity"
    assert np.hypot(*np.subtract(reg.epicenter_um, sec.epicenter_um)) < 50.0
    assert np.dot(reg.rostral_direction, sec.rostral_direction) > 0.999
    assert check_bins(reg, truth, origin, sec.rostral_direction) >= 15
    # bins tile the section without overlap
    bins = np.array([m for k, m in reg.masks.items() if k.startswith("rc_")])
    assert (bins.sum(axis=0) == reg.masks["section"]).all()
    # the bin just rostral of the epicenter is "rc_-500_0" (negative = rostral)
    epi = np.asarray(reg.epicenter_um)
    d = np.dot(centroid_um(reg.masks["rc_-500_0"], origin) - epi, sec.rostral_direction)
    assert 150.0 < d < 350.0


@pytest.mark.slow
def test_intact_horizontal_section_uses_plan_point_or_flags_centre(slide):
    sid = "rat01-lesion"
    sec = slide.section(sid)
    reg, truth, origin = regions_of(slide, sid)
    assert dice(reg.masks["section"], truth["section"]) >= 0.95
    assert dice(reg.masks["gray_matter"], truth["gray_matter"]) >= 0.9
    assert reg.epicenter_source == "centre"  # no cavity: flagged
    reg, truth, origin = regions_of(slide, sid, epicenter_um=sec.epicenter_um)
    assert reg.epicenter_source == "plan"
    assert np.hypot(*np.subtract(reg.epicenter_um, sec.epicenter_um)) < 1e-9
    assert check_bins(reg, truth, origin, sec.rostral_direction) >= 15


@pytest.mark.slow
def test_bin_length_is_configurable(slide):
    reg, _, _ = regions_of(slide, "rat04-lesion", bin_length_um=1000.0)
    names = [k for k in reg.masks if k.startswith("rc_")]
    assert "rc_-1000_0" in names and "rc_0_1000" in names
    assert all(b - a == 1000.0 for a, b in reg.bin_edges_um)


@pytest.mark.slow
def test_rostral_direction_follows_plan(slide):
    img, origin, _ = section_frame(slide, "rat04-lesion")
    a = section_regions(
        img, origin_um=origin, pixel_size_um=P_UM, orientation="horizontal", injection_side="right"
    )
    b = section_regions(
        img, origin_um=origin, pixel_size_um=P_UM, orientation="horizontal", injection_side="right",
        rostral_direction_deg=0.0,
    )  # fmt: skip
    assert np.dot(a.rostral_direction, b.rostral_direction) < -0.999
    assert a.masks["left"].sum() == pytest.approx(b.masks["right"].sum(), rel=0.01)


# ------------------------------------------------------------------ mosaic input


def test_regions_through_section_mosaic(slide):
    """Tiles at 0.65 µm/px through SectionMosaic give the same regions as the direct render."""
    sid = "rat02-Th7"
    x0, y0, x1, y1 = slide.section_bbox_um(sid)
    bbox = (x0 - 100.0, y0 - 100.0, x1 + 100.0, y1 + 100.0)
    mos = SectionMosaic(bbox, n_channels=1, tile_pixel_size_um=0.65, mosaic_pixel_um=P_UM)
    rng = np.random.default_rng(3)
    for y in np.arange(bbox[1] + 150.0, bbox[3] + 150.0, 300.0):
        for x in np.arange(bbox[0] + 150.0, bbox[2] + 150.0, 300.0):
            z = float(slide.focal_plane_z_um(x, y))
            rate = slide.render(
                center_um=(x, y), pixel_size_um=0.65, shape=(512, 512), channel="DAPI", z_um=z
            )
            mos.add_tile(camera(rate, rng)[None], center_um=(float(x), float(y)), pixel_size_um=0.65)
    img = mos.image(0)
    h, w = img.shape
    p = float(mos.pixel_size_um)
    origin = tuple(mos.origin_um)
    centre = (origin[0] + w * p / 2.0, origin[1] + h * p / 2.0)
    truth = slide.render_truth_labels(center_um=centre, pixel_size_um=p, shape=(h, w), section_id=sid)
    reg = section_regions(
        img, origin_um=origin, pixel_size_um=p, orientation="coronal", injection_side="right"
    )
    assert dice(reg.masks["section"], truth["section"]) >= 0.95
    assert dice(reg.masks["gray_matter"], truth["gray_matter"]) >= 0.9
    assert dice(reg.masks["white_matter"], truth["white_matter"]) >= 0.9
    got = centroid_um(reg.masks["rubrospinal_territory"], origin, p)
    want = centroid_um(truth["rubrospinal_territory"], origin, p)
    assert np.hypot(*(got - want)) < 50.0
    # the direct render at mosaic resolution looks like the mosaic
    direct = slide.render(
        center_um=centre,
        pixel_size_um=p,
        shape=(h, w),
        channel="DAPI",
        z_um=float(slide.focal_plane_z_um(*centre)),
    )
    direct = camera(direct, rng)
    ok = np.isfinite(img) & truth["section"]
    assert np.median(img[ok]) == pytest.approx(np.median(direct[ok]), rel=0.05)
    tm = tissue_mask(direct, pixel_size_um=p)
    assert dice(tm, reg.masks["section"]) >= 0.98


# ------------------------------------------------------------------ user polygons


@pytest.mark.slow
def test_user_polygons_override_automatic_masks(slide):
    sid = "rat03-C5"
    img, origin, truth = section_frame(slide, sid)
    sec = slide.section(sid)
    gray_poly = sec.gray_matter[0]
    box = np.array([[40_000.0, 4_500.0], [40_400.0, 4_500.0], [40_400.0, 4_900.0], [40_000.0, 4_900.0]])
    reg = section_regions(
        img, origin_um=origin, pixel_size_um=P_UM, orientation="coronal", injection_side="left",
        user_polygons_um={"gray_matter": gray_poly, "rubrospinal_territory": box},
    )  # fmt: skip
    shape = img.shape
    box_mask = rasterize_polygon_um(box, shape=shape, origin_um=origin, pixel_size_um=P_UM)
    assert (reg.masks["rubrospinal_territory"] == (box_mask & reg.masks["section"])).all()
    assert box_mask.sum() == pytest.approx((400 / P_UM) ** 2, rel=0.05)
    gray = rasterize_polygon_um(gray_poly, shape=shape, origin_um=origin, pixel_size_um=P_UM)
    assert (reg.masks["gray_matter"] == (gray & reg.masks["section"])).all()
    assert (reg.masks["white_matter"] == (reg.masks["section"] & ~reg.masks["gray_matter"])).all()
    assert set(reg.user_regions) == {"gray_matter", "rubrospinal_territory"}
    # the user's section outline wins too
    reg2 = section_regions(
        img, origin_um=origin, pixel_size_um=P_UM, orientation="coronal", injection_side="left",
        user_polygons_um={"section": sec.outline},
    )  # fmt: skip
    outline = rasterize_polygon_um(sec.outline, shape=shape, origin_um=origin, pixel_size_um=P_UM)
    assert (reg2.masks["section"] == outline).all()
    assert dice(outline, truth["section"] | truth["central_canal"]) > 0.995


def test_rasterize_matches_truth_pixel_convention(slide):
    sid = "rat02-Th7"
    img, origin, truth = section_frame(slide, sid)
    sec = slide.section(sid)
    outline = rasterize_polygon_um(sec.outline, shape=img.shape, origin_um=origin, pixel_size_um=P_UM)
    assert dice(outline & ~truth["central_canal"], truth["section"]) > 0.995


# ------------------------------------------------------------------ edge cases


def test_not_imaged_pixels_are_not_tissue(slide):
    img, _, truth = section_frame(slide, "rat02-Th7")
    img = img.copy()
    img[:, : img.shape[1] // 4] = np.nan
    t = tissue_mask(img, pixel_size_um=P_UM)
    assert not t[:, : img.shape[1] // 4].any()
    keep = truth["section"].copy()
    keep[:, : img.shape[1] // 4] = False
    assert dice(t, keep) >= 0.95


def test_empty_inputs():
    img = np.full((50, 60), np.nan, dtype=np.float32)
    t = tissue_mask(img, pixel_size_um=P_UM)
    assert t.shape == (50, 60) and not t.any()
    g = gray_matter_mask(np.zeros((50, 60)), tissue=t, pixel_size_um=P_UM)
    assert not g.any()
    with pytest.raises(ValueError):
        tissue_mask(np.zeros((2, 3, 4)), pixel_size_um=P_UM)


# ------------------------------------------------------- other DAPI contrasts


def lattice_dapi(truth, rng, occupancy, background, *, cell_um=10.0, p=P_UM):
    """A DAPI mosaic of another stain/microscope on the slide's geometry (not its renderer).

    Nuclei on a jittered lattice, kept with an occupancy per tissue class
    (gray, white), log-normal brightness, a textured background per class,
    Poisson noise.
    """
    from scipy import ndimage as ndi

    tissue = truth["section"]
    gray = truth["gray_matter"] & tissue
    h, w = tissue.shape
    yy, xx = np.mgrid[0 : int(h * p / cell_um), 0 : int(w * p / cell_um)]
    r = np.clip(((yy + rng.uniform(0, 1, yy.shape)) * cell_um / p).astype(int), 0, h - 1)
    c = np.clip(((xx + rng.uniform(0, 1, xx.shape)) * cell_um / p).astype(int), 0, w - 1)
    occ = np.where(gray[r, c], occupancy[0], np.where(tissue[r, c], occupancy[1], 0.0))
    keep = rng.uniform(0, 1, occ.shape) < occ
    img = np.zeros((h, w))
    np.add.at(img, (r[keep], c[keep]), rng.lognormal(np.log(1500), 0.3, keep.sum()))
    img = ndi.gaussian_filter(img, 0.8)
    texture = ndi.gaussian_filter(rng.standard_normal((h, w)), 8)
    texture = 1 + 0.08 * texture / texture.std()
    level = np.where(gray, background[0], np.where(tissue, background[1], 0.0))
    img += ndi.gaussian_filter(level * texture * 36, 1.0)
    return (rng.poisson(img * 0.3) / 0.3 + 50).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("occupancy", "background", "section_id"),
    [
        pytest.param((0.5, 0.28), (0.8, 1.2), "rat03-C5", id="darker-gray-neuropil-C5"),
        pytest.param((0.5, 0.28), (0.8, 1.2), "rat05-L2", id="darker-gray-neuropil-L2"),
        pytest.param((0.5, 0.3), (1.0, 1.0), "rat03-C5", id="nuclei-only-C5"),
        pytest.param((0.5, 0.3), (1.0, 1.0), "rat02-Th7", id="nuclei-only-Th7"),
    ],
)
def test_gray_matter_holds_under_other_dapi_contrasts(slide, occupancy, background, section_id):
    """Gray matter found by its nuclei and by anatomy, whichever way its neuropil differs."""
    _, _, truth = section_frame(slide, section_id)
    img = lattice_dapi(truth, np.random.default_rng(0), occupancy, background)
    tissue = tissue_mask(img, pixel_size_um=P_UM)
    gray = gray_matter_mask(img, tissue=tissue, pixel_size_um=P_UM)
    true_gray = truth["gray_matter"] & truth["section"]
    assert dice(tissue, truth["section"]) >= 0.95
    assert dice(gray, true_gray) >= 0.9
    assert dice(tissue & ~gray, truth["section"] & ~truth["gray_matter"]) >= 0.9
    assert gray.sum() / true_gray.sum() == pytest.approx(1.0, abs=0.1)


# ------------------------------------------------------------ model B's slide

MODEL_B_CELL_UM = 9 * 0.454  # the analysis grid of model B's 10x tiles (9 camera pixels)


@pytest.fixture(scope="module")
def slide_b():
    from acquisition.demo.model_b import model_b_slide

    return model_b_slide()


def model_b_dapi(slide_b, section_id: str, rng: np.random.Generator):
    """Model B's 10x DAPI at the analysis grid (its own renderer: sums of 9 × 9 camera pixels), noisy."""
    p = MODEL_B_CELL_UM
    x0, y0, x1, y1 = slide_b.section_bbox_um(section_id)
    w = int(np.ceil((x1 - x0 + 2 * MARGIN_UM) / p))
    h = int(np.ceil((y1 - y0 + 2 * MARGIN_UM) / p))
    c = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
    rate = slide_b.render(
        center_um=c, pixel_size_um=p, shape=(h, w), channel="DAPI", z_um=float(slide_b.focal_plane_z_um(*c)),
        numerical_aperture=0.30,
    )  # fmt: skip
    truth = slide_b.render_truth_labels(center_um=c, pixel_size_um=p, shape=(h, w), section_id=section_id)
    electrons = rng.poisson(rate * 20.0 * 0.72).astype(np.float32)  # 20 ms, QE 0.72
    return electrons / 81.0, truth  # per camera pixel, as the mosaic's block means


@pytest.mark.slow
@pytest.mark.parametrize(
    "section_id", ["rat11-Th7", "rat12-Th7", "rat13-Th7", "rat16-Th7", "rat14-C5", "rat15-L2"]
)
def test_gray_matter_on_model_b(slide_b, section_id):
    """A DAPI of low gray/white contrast (1.35) and sparse nuclei, whose counting noise hides
    the contrast of the mean signal: the start from the most reliable feature finds it
    (Th7 with the former start from the first principal component: Dice 0.69-0.87)."""
    img, truth = model_b_dapi(slide_b, section_id, np.random.default_rng(1))
    tissue = tissue_mask(img, pixel_size_um=MODEL_B_CELL_UM)
    gray = gray_matter_mask(img, tissue=tissue, pixel_size_um=MODEL_B_CELL_UM)
    true_gray = truth["gray_matter"]
    assert dice(tissue, truth["section"]) >= 0.95
    assert dice(gray, true_gray) >= 0.9
    assert dice(tissue & ~gray, truth["white_matter"]) >= 0.9
    assert gray.sum() / true_gray.sum() == pytest.approx(1.0, abs=0.1)
