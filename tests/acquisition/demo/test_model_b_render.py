"""Model B's renderer: tile locality, optics (PSF, defocus, brightness), beads and focus bumps."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.special import ndtr

from acquisition.demo.model_b import optics
from acquisition.demo.model_b.slide import BEAD_AREA_UM, BEAD_EMISSION, ModelBSlide, model_b_slide

pytestmark = pytest.mark.filterwarnings("error")

P10X_UM = 0.454
CHANNELS = ("DAPI", "tdTomato")


@pytest.fixture(scope="module")
def slide() -> ModelBSlide:
    return model_b_slide()


def _focus(slide: ModelBSlide, xy: tuple[float, float]) -> float:
    return float(slide.focal_plane_z_um(*xy))


def _sharpness(img: np.ndarray) -> float:
    lap = img[1:-1, :-2] + img[1:-1, 2:] + img[:-2, 1:-1] + img[2:, 1:-1] - 4.0 * img[1:-1, 1:-1]
    return float(lap.var() / img.mean() ** 2)


# ------------------------------------------------------------------ tissue


@pytest.mark.parametrize("channel", CHANNELS)
def test_tissue_shows_and_glass_is_dark(slide: ModelBSlide, channel: str) -> None:
    territory = slide.section("rat11-Th7").rubrospinal_territory
    assert territory is not None
    xy = (float(territory[:, 0].mean()), float(territory[:, 1].mean()))
    img = slide.render(
        center_um=xy, pixel_size_um=P10X_UM, shape=(256, 256), channel=channel, z_um=_focus(slide, xy)
    )
    assert img.dtype == np.float32 and img.shape == (256, 256)
    assert np.median(img) > 0.1  # background everywhere in tissue
    assert img.max() > 5.0  # and bright objects
    glass = slide.render(
        center_um=(10_000.0, 12_500.0), pixel_size_um=P10X_UM, shape=(64, 64), channel=channel, z_um=0.0
    )
    assert glass.max() == 0.0


@pytest.mark.parametrize(
    ("channel", "pixel_size_um", "defocus_um", "section_id", "bumps"),
    [
        ("DAPI", 0.454, 0.0, "rat11-C5", False),
        ("tdTomato", 0.454, 0.0, "rat11-C5", False),
        ("tdTomato", 0.454, 9.0, "rat14-Th7", False),
        ("DAPI", 0.227, 3.0, "rat13-lesion", False),
        ("tdTomato", 1.135, -25.0, "rat13-lesion", False),
        ("DAPI", 0.65, 40.0, "rat16-L2", False),
        ("tdTomato", 0.454, 1.0, "rat12-C5", True),
    ],
    ids=["dapi-10x", "tracer-10x", "tracer-defocus", "dapi-20x", "tracer-4x-far", "dapi-odd-p", "bumps-on"],
)
def test_frames_offset_by_whole_pixels_agree_exactly(
    slide: ModelBSlide, channel: str, pixel_size_um: float, defocus_um: float, section_id: str, bumps: bool
) -> None:
    sl = slide.with_focus_bumps(bumps)
    p = pixel_size_um
    box = sl.section_bbox_um(section_id)
    h, w = 240, 320
    xy = (box[0] + 0.3 * w * p, (box[1] + box[3]) / 2.0)  # glass, edge and tissue
    z = _focus(sl, xy) + defocus_um
    a = sl.render(center_um=xy, pixel_size_um=p, shape=(h, w), channel=channel, z_um=z)
    for dy, dx in [(37, -101), (-120, 5), (1, 1)]:
        b = sl.render(
            center_um=(xy[0] + dx * p, xy[1] + dy * p), pixel_size_um=p, shape=(h, w), channel=channel, z_um=z
        )
        ra = slice(max(dy, 0), h + min(dy, 0))
        ca = slice(max(dx, 0), w + min(dx, 0))
        rb = slice(max(-dy, 0), h + min(-dy, 0))
        cb = slice(max(-dx, 0), w + min(-dx, 0))
        np.testing.assert_array_equal(a[ra, ca], b[rb, cb])
    assert a.max() > 0.0 and a.min() == 0.0


def test_same_point_same_value_in_differently_shaped_frames(slide: ModelBSlide) -> None:
    b = slide.section_bbox_um("rat15-C5")
    xy = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    p = P10X_UM
    big = slide.render(center_um=xy, pixel_size_um=p, shape=(400, 600), channel="tdTomato", z_um=2.0)
    c_xy = (xy[0] + (200 + 75 - 300) * p, xy[1] + (120 + 50 - 200) * p)
    small = slide.render(center_um=c_xy, pixel_size_um=p, shape=(100, 150), channel="tdTomato", z_um=2.0)
    np.testing.assert_array_equal(small, big[120:220, 200:350])


# ------------------------------------------------------------------ focus


@pytest.mark.parametrize("channel", CHANNELS)
def test_defocus_lowers_sharpness_and_the_focal_surface_is_sharpest(slide: ModelBSlide, channel: str) -> None:
    sec = slide.section("rat12-C5")
    assert sec.rubrospinal_territory is not None
    xy = tuple(sec.rubrospinal_territory.mean(axis=0))
    z0 = _focus(slide, xy)

    def sharp(z: float) -> float:
        img = slide.render(center_um=xy, pixel_size_um=P10X_UM, shape=(384, 384), channel=channel, z_um=z)
        return _sharpness(img)

    in_focus = sharp(z0)
    assert sharp(z0 + 8.0) < 0.5 * in_focus
    assert sharp(z0 - 25.0) < 0.05 * in_focus
    assert in_focus > sharp(z0 + 2.0) and in_focus > sharp(z0 - 2.0)
    assert sharp(z0) == in_focus


def test_focal_surface_and_bumps(slide: ModelBSlide) -> None:
    x0, y0, x1, y1 = slide.tissue_bbox_um()
    xs, ys = np.meshgrid(np.linspace(x0, x1, 50), np.linspace(y0, y1, 25))
    z = slide.focal_plane_z_um(xs, ys)
    assert 5.0 <= float(np.ptp(z)) <= 40.0
    assert not slide.focus_bumps_on
    on = slide.with_focus_bumps(True)
    assert on.focus_bumps == slide.focus_bumps and len(on.focus_bumps) >= 3
    for b in on.focus_bumps:
        assert 3.0 <= abs(b.amplitude_um) <= 8.0
        assert 300.0 <= 2.355 * b.sigma_major_um <= 1000.0
        lift = float(on.focal_plane_z_um(b.x_um, b.y_um) - slide.focal_plane_z_um(b.x_um, b.y_um))
        assert lift == pytest.approx(b.amplitude_um, abs=0.05 * abs(b.amplitude_um))
    b = max(on.focus_bumps, key=lambda b: abs(b.amplitude_um))
    kw: dict[str, object] = dict(
        center_um=(b.x_um, b.y_um), pixel_size_um=P10X_UM, shape=(256, 256), channel="DAPI"
    )
    z_smooth = _focus(slide, (b.x_um, b.y_um))
    flat = _sharpness(slide.render(**kw, z_um=z_smooth))  # type: ignore[arg-type]
    missed = _sharpness(on.render(**kw, z_um=z_smooth))  # type: ignore[arg-type]
    refocused = _sharpness(on.render(**kw, z_um=z_smooth + b.amplitude_um))  # type: ignore[arg-type]
    assert missed < 0.6 * flat
    assert refocused == pytest.approx(flat, rel=0.1)


# ------------------------------------------------------------------ optics


@pytest.mark.parametrize(
    ("objective", "channel"), [("4x", "tdTomato"), ("10x", "tdTomato"), ("10x", "DAPI"), ("20x", "tdTomato")]
)
def test_psf_width_follows_the_objective_na(objective: str, channel: str) -> None:
    table = ModelBSlide.psf(objective, channel)
    na = optics.OBJECTIVE_NA[objective][1]
    airy_fwhm = 0.514 * optics.EMISSION_UM[channel] / na
    assert table.fwhm_um(0.0) == pytest.approx(airy_fwhm, rel=0.12)
    np.testing.assert_allclose(table.weight.sum(axis=1), 1.0)
    # the two Gaussians hold the encircled energy: within 1.5 % in focus, 3.5 % over the depth of field
    assert table.rms_error[0] < 0.015
    dof = optics.EMISSION_UM[channel] / na**2
    assert table.rms_error[table.defocus_um <= dof].max() < 0.035
    widths = [table.fwhm_um(dz) for dz in (0.0, 2.0, 5.0, 10.0, 20.0)]
    assert all(a < b for a, b in itertools.pairwise(widths))
    # far from focus the geometric blur disc dominates: half the energy within 0.71 of its radius
    rho = float(optics.defocus_disc_radius_um(30.0, na))
    w, s = table.at(np.array([30.0]))
    r = np.linspace(0.0, 3.0 * rho, 3001)
    ee = (w[0] * (1.0 - np.exp(-0.5 * (r[:, None] / s[0]) ** 2))).sum(axis=1)
    assert r[np.searchsorted(ee, 0.5)] == pytest.approx(rho / math.sqrt(2.0), rel=0.2)


def test_encircled_energy_of_the_airy_pattern() -> None:
    # 83.8 % of an Airy pattern's energy lies within its first dark ring
    lam, na = 0.581, 0.3
    ee = optics.encircled_energy(np.array([0.61 * lam / na * 1.0]), na, lam, 0.0)
    assert ee[0] == pytest.approx(0.838, abs=0.01)


def _expected_bead(
    xx: np.ndarray,
    yy: np.ndarray,
    bx: float,
    by: float,
    p: float,
    table: optics.PsfTable,
    dz: float,
    na: float,
) -> np.ndarray:
    """Closed form: a bead's square (its area) blurred by the PSF mixture, integrated over pixels."""
    side = 0.17 * math.sqrt(math.pi) / 2.0
    w, s = table.at(np.array([dz]))

    def psi(t: np.ndarray) -> np.ndarray:
        return t * ndtr(t) + np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)

    def response(x: np.ndarray, lo: float, hi: float, sig: float) -> np.ndarray:
        edges = [(lo, 1.0), (hi, -1.0)]
        out = np.zeros_like(x)
        for e, sign in edges:
            out += sign * (psi((x + p / 2 - e) / sig) - psi((x - p / 2 - e) / sig)) * sig / p
        return out

    img = np.zeros_like(xx)
    for wk, sk in zip(w[0], s[0], strict=True):
        img += (
            wk
            * response(xx, bx - side / 2, bx + side / 2, sk)
            * response(yy, by - side / 2, by + side / 2, sk)
        )
    return img * BEAD_EMISSION * p * p * optics.brightness_factor(na)


@pytest.mark.parametrize(
    "objective",
    [pytest.param("4x", marks=pytest.mark.slow), "10x", pytest.param("20x", marks=pytest.mark.slow)],
)
def test_beads_render_as_the_psf_at_their_positions(slide: ModelBSlide, objective: str) -> None:
    mag, na = optics.OBJECTIVE_NA[objective]
    p = optics.SENSOR_PIXEL_UM / mag
    beads = slide.beads()
    x0, y0, x1, y1 = BEAD_AREA_UM
    xy = ((x0 + x1) / 2 + 3.3, (y0 + y1) / 2 - 1.7)
    h = w = 512 if objective == "20x" else 256
    z = _focus(slide, xy)
    img = slide.render(center_um=xy, pixel_size_um=p, shape=(h, w), channel="tdTomato", z_um=z).astype(
        np.float64
    )
    assert slide.render(center_um=xy, pixel_size_um=p, shape=(h, w), channel="DAPI", z_um=z).max() == 0.0
    table = slide.psf(objective, "tdTomato")
    gx = xy[0] + (np.arange(w) + 0.5 - w / 2) * p
    gy = xy[1] + (np.arange(h) + 0.5 - h / 2) * p
    xx, yy = np.meshgrid(gx, gy)
    want = np.zeros_like(img)
    reach = 5.0 * float(table.sigma_um[0].max())
    near = (np.abs(beads.xy_um[:, 0] - xy[0]) < w / 2 * p + reach) & (
        np.abs(beads.xy_um[:, 1] - xy[1]) < h / 2 * p + reach
    )
    for ox, oy in beads.xy_um[near]:
        want += _expected_bead(xx, yy, ox, oy, p, table, z - _focus(slide, (ox, oy)), na)
    k = int(np.ceil(reach / p))
    inner = (slice(k, h - k), slice(k, w - k))
    assert img[inner].sum() == pytest.approx(want[inner].sum(), rel=0.01)  # flux
    assert np.abs(img - want)[inner].max() < 0.03 * want[inner].max()  # shape, wide component included
    inside = (np.abs(beads.xy_um[:, 0] - xy[0]) < (w / 2 - k) * p) & (
        np.abs(beads.xy_um[:, 1] - xy[1]) < (h / 2 - k) * p
    )
    chosen = beads.xy_um[inside & beads.isolated]
    assert len(chosen) >= 3
    for bx, by in chosen:
        c, r = round((bx - gx[0]) / p), round((by - gy[0]) / p)
        spot = img[r - 2 : r + 3, c - 2 : c + 3]
        pr, pc = np.unravel_index(int(np.argmax(spot)), spot.shape)
        assert math.hypot(gx[c - 2 + pc] - bx, gy[r - 2 + pr] - by) <= 0.75 * p  # brightest pixel on the bead
        assert spot.max() == pytest.approx(want[r - 2 : r + 3, c - 2 : c + 3].max(), rel=0.03)


def test_brightness_follows_na4_over_m2(slide: ModelBSlide) -> None:
    x0, y0, x1, y1 = BEAD_AREA_UM
    xy = ((x0 + x1) / 2, (y0 + y1) / 2)
    z = _focus(slide, xy)
    totals = {}
    side_um = 116.0  # the same patch of beads at every objective
    for objective in ("4x", "10x", "20x"):
        mag, na = optics.OBJECTIVE_NA[objective]
        p = optics.SENSOR_PIXEL_UM / mag
        n = round(side_um / p)
        img = slide.render(
            center_um=xy, pixel_size_um=p, shape=(n, n), channel="tdTomato", z_um=z, numerical_aperture=na
        )
        totals[objective] = float(img.sum()) / optics.brightness_factor(na)
    # once the NA⁴ factor is divided out, the photons from the same beads agree
    assert totals["4x"] == pytest.approx(totals["10x"], rel=0.05)
    assert totals["20x"] == pytest.approx(totals["10x"], rel=0.05)
    assert optics.brightness_factor(0.5) / optics.brightness_factor(0.13) == pytest.approx((0.5 / 0.13) ** 4)


def test_labelled_objects_are_bright_where_the_truth_says(slide: ModelBSlide) -> None:
    sec = slide.section("rat16-Th7")
    assert sec.rubrospinal_territory is not None
    xy = tuple(sec.rubrospinal_territory.mean(axis=0))
    kw = dict(center_um=xy, pixel_size_um=P10X_UM, shape=(512, 512))
    img = slide.render(**kw, channel="tdTomato", z_um=_focus(slide, xy))  # type: ignore[arg-type]
    masks = slide.render_truth_labels(**kw, section_id="rat16-Th7")  # type: ignore[arg-type]
    axons = masks["axons"]
    assert axons.sum() > 1000
    tissue = masks["section"] & ~axons
    assert np.median(img[axons]) > 10 * np.median(img[tissue])
    labels = slide.render_axon_labels(**kw, section_id="rat16-Th7")  # type: ignore[arg-type]
    np.testing.assert_array_equal(labels > 0, axons)


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize("channel", ["GFP", "dapi", ""], ids=["GFP", "lowercase", "empty"])
def test_unknown_channel_raises_naming_it(slide: ModelBSlide, channel: str) -> None:
    with pytest.raises(ValueError, match=f"unknown channel '{channel}'"):
        slide.render(
            center_um=(40_000.0, 5_000.0), pixel_size_um=0.454, shape=(8, 8), channel=channel, z_um=0.0
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
        ({"numerical_aperture": 1.2}, "numerical_aperture"),
    ],
    ids=["zero-pixel", "nan-pixel", "empty-shape", "inf-z", "out-dtype", "out-shape", "oil-na"],
)
def test_bad_render_arguments_raise(slide: ModelBSlide, kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = dict(
        center_um=(40_000.0, 5_000.0), pixel_size_um=0.454, shape=(8, 8), channel="DAPI", z_um=0.0
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        slide.render(**args)  # type: ignore[arg-type]
