"""Whole scans through a rotated (90°), mirrored and slightly rotated (1.5°) demo camera (issue 12).

Each demo config turns the camera and declares the matching ``PixelSizeAffine``
(``hardware_configs/demo-*.cfg``); the same scans through ``demo.cfg`` (an
aligned camera) are the reference.

* Live analysis: rat01-Th7 at 10x (512² sensor, fixed focus at the section's
  focal plane) in a :class:`ScanSession` with the analysis process, as
  ``cordscope scan`` runs it. The scan's registration pairs agree (NCC high,
  measured shifts ≈ 0: the demo stage has no positioning error), the region
  table matches the aligned camera's, and the tiles placed in the exports'
  stage-aligned frame agree in their overlaps.
* Placement: a slide of bright spots at known stage positions scanned at 10x
  (256² sensor) without analysis, exported to BDV and OME-Zarr; every spot is
  found at its stage position in both, within a fraction of a pixel.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from acquisition.demo import find_demo_hub
from acquisition.hardware import DEMO_CONFIG, build_core
from acquisition.pixel_geometry import stage_to_pixel
from acquisition.plan import plan_from_dict
from acquisition.session import ScanSession, SessionResult
from acquisition.storage import ScanFile
from analysis.exports import export_bdv, export_ome_zarr, oriented_tile, section_mosaic_geometry
from analysis.results import load_scan_results

pytestmark = pytest.mark.slow

CONFIGS = {
    "aligned": "demo.cfg",
    "rot90": "demo-rotated-90.cfg",
    "mirrored": "demo-mirrored.cfg",
    "rot1.5": "demo-rotated-1.5.cfg",
}
TURNED = ["rot90", "mirrored", "rot1.5"]
SECTION = "rat01-Th7"

#: Regions compared with the aligned camera's table, and how far their % axonal area may differ (relative).
COMPARED_REGIONS = ("section", "white_matter", "gray_matter", "rubrospinal_territory")
MAX_PCT_RELATIVE_DIFF = 0.05


def _core(config: str, sensor_px: int):
    core = build_core(DEMO_CONFIG.parent / config)
    core.setProperty("Camera", "SensorWidth", sensor_px)
    core.setProperty("Camera", "SensorHeight", sensor_px)
    core.setProperty("Camera", "Noise", "On")
    core.setProperty("Camera", "NoiseSeed", 7)
    return core


# ------------------------------------------------------------------ live analysis


@dataclasses.dataclass
class LiveRun:
    path: Path
    result: SessionResult
    faults: list


def _live_scan(config: str, path: Path) -> LiveRun:
    from acquisition.demo.plans import demo_plan
    from analysis.live import AnalysisProcess

    core = _core(config, 512)
    try:
        slide = find_demo_hub(core).slide
        truth = next(t for t in slide.sections if t.section_id == SECTION)
        x0, y0, x1, y1 = truth.bbox_um
        z = float(slide.focal_plane_z_um((x0 + x1) / 2, (y0 + y1) / 2))
        plan = demo_plan(
            output=path,
            hardware_config=DEMO_CONFIG.parent / config,
            objective="10x",
            section_ids=[SECTION],
            focus={"strategy": "fixed", "z_um": z},
        )
        session = ScanSession(core, plan, analysis=AnalysisProcess, overwrite=True)
        result = session.run()
        faults = list(getattr(session.analysis, "faults", []))
    finally:
        core.close()
    return LiveRun(path, result, faults)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LiveRun]:
    logging.getLogger("pymmcore-plus").setLevel(logging.ERROR)
    folder = tmp_path_factory.mktemp("rotated-live")
    return {name: _live_scan(cfg, folder / f"{name}.h5") for name, cfg in CONFIGS.items()}


def _registration(path: Path) -> dict[str, np.ndarray]:
    with ScanFile.open(path) as scan:
        group = scan.section(SECTION).analysis_group
        assert group is not None and "registration" in group
        reg = group["registration"]
        return {k: reg[k][()] for k in ("pairs", "pair_shift_px", "pair_ncc", "pair_used")}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_scan_and_live_analysis_complete_with_the_cameras_affine(live, name):
    run = live[name]
    assert run.result.complete, (run.result.scan.message, run.result.analysis_error)
    assert run.faults == []
    with ScanFile.open(run.path) as scan:
        stored = scan.section(SECTION).pixel_affine_um
    core = _core(CONFIGS[name], 64)
    try:
        core.setConfig("Objective", "10x")
        expected = find_demo_hub(core).camera.true_pixel_affine_um()
    finally:
        core.close()
    np.testing.assert_allclose(stored, expected, atol=1e-9)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_registration_pairs_agree(live, name):
    reg = _registration(live[name].path)
    aligned = _registration(live["aligned"].path)
    if name == "rot1.5":  # tiles spaced by the smaller stage rectangle a turned field covers
        assert len(reg["pairs"]) >= len(aligned["pairs"])
    else:  # a square sensor turned by 90° or mirrored: the same tile grid's neighbours
        assert len(reg["pairs"]) == len(aligned["pairs"]) > 50
    used = reg["pair_used"].astype(bool)
    assert used.sum() >= 0.8 * len(used)
    ncc = reg["pair_ncc"][used]
    # a turned field's overlap may fall on the tissue's edge: a rare pair with little texture
    assert np.median(ncc) > 0.97 and np.mean(ncc > 0.8) >= 0.95, np.sort(ncc)[:5]
    # no stage error: each well-textured pair measures the planned offset; a rare pair with little
    # texture (low NCC, the solve weighs it less) within a couple of pixels
    shift_px = np.hypot(*reg["pair_shift_px"][used].T)
    textured = ncc >= 0.9
    shown = sorted(zip(shift_px.round(2), ncc.round(3), strict=True))[-5:]
    assert textured.mean() >= 0.9, shown
    assert np.mean(shift_px[textured] < 0.1) >= 0.95 and shift_px[textured].max() < 1.0, shown
    assert shift_px.max() < 2.0, shown


@pytest.mark.parametrize("name", TURNED)
def test_region_table_matches_the_aligned_camera(live, name):
    tables = {
        k: {r.region: r for r in load_scan_results(live[k].path)[SECTION].analysis.table}
        for k in ("aligned", name)
    }
    for region in COMPARED_REGIONS:
        a, b = tables["aligned"][region], tables[name][region]
        # the regions are drawn on 4 µm analysis cells: a turned grid's cells cut the gray/white
        # boundary (a few mm long) differently, half a cell along it is ~1.5 % of the gray matter
        assert b.area_um2 == pytest.approx(a.area_um2, rel=0.02), region
        assert b.pct_axonal_area == pytest.approx(a.pct_axonal_area, rel=MAX_PCT_RELATIVE_DIFF), region


def _inner_rectangle(valid: np.ndarray) -> tuple[slice, slice]:
    """A rectangle of ``valid`` pixels only: border rows/columns with invalid pixels trimmed, worst first."""
    r0, r1, c0, c1 = 0, valid.shape[0], 0, valid.shape[1]
    while r1 > r0 and c1 > c0:
        v = valid[r0:r1, c0:c1]
        bad = {
            "top": int((~v[0]).sum()),
            "bottom": int((~v[-1]).sum()),
            "left": int((~v[:, 0]).sum()),
            "right": int((~v[:, -1]).sum()),
        }
        side = max(bad, key=lambda k: bad[k])
        if not bad[side]:
            break
        r0, r1, c0, c1 = {
            "top": (r0 + 1, r1, c0, c1),
            "bottom": (r0, r1 - 1, c0, c1),
            "left": (r0, r1, c0 + 1, c1),
            "right": (r0, r1, c0, c1 - 1),
        }[side]
    return slice(r0, r1), slice(c0, c1)


def _snap_offsets_px(geometry) -> np.ndarray:
    """(n, 2) how far (rows, cols) each tile sits in the mosaic from its stage position: 0 when resampled,
    the whole-pixel snap of each exactly turned tile otherwise."""
    if geometry.resampled:
        return np.zeros((len(geometry.centres_um), 2))
    ph, pw = geometry.placed_shape_px
    p = geometry.pixel_size_um
    true_rows = (geometry.centres_um[:, 1] + (0.5 - ph / 2) * p - geometry.origin_um[1]) / p
    true_cols = (geometry.centres_um[:, 0] + (0.5 - pw / 2) * p - geometry.origin_um[0]) / p
    return geometry.corners_px - np.stack([true_rows, true_cols], axis=1)


def _overlap_agreement(path: Path) -> np.ndarray:
    """Overlapping tiles placed in the export's frame: per pair NCC, and how far (px, larger axis)
    their measured offset is from the one the placement implies (the snaps of exactly turned tiles)."""
    from skimage.registration import phase_cross_correlation

    out = []
    with ScanFile.open(path) as scan:
        sec = scan.section(SECTION)
        done = sec.done_indices()
        geometry = section_mosaic_geometry(sec, done)
        snaps = _snap_offsets_px(geometry)
        placed = []
        for k, t in enumerate(done):
            rows, cols, pixels, inside = oriented_tile(sec.read_tile(int(t))[0, 0], geometry, k)
            mask = np.ones(pixels.shape, bool) if inside is None else inside
            placed.append((rows, cols, pixels.astype(np.float64), mask))
    for i in range(len(placed)):
        for j in range(i + 1, len(placed)):
            (ri, ci, a, ma), (rj, cj, b, mb) = placed[i], placed[j]
            r0, r1 = max(ri.start, rj.start), min(ri.stop, rj.stop)
            c0, c1 = max(ci.start, cj.start), min(ci.stop, cj.stop)
            if r1 - r0 < 16 or c1 - c0 < 16:
                continue
            wa = a[r0 - ri.start : r1 - ri.start, c0 - ci.start : c1 - ci.start]
            wb = b[r0 - rj.start : r1 - rj.start, c0 - cj.start : c1 - cj.start]
            both = ma[r0 - ri.start : r1 - ri.start, c0 - ci.start : c1 - ci.start]
            both = both & mb[r0 - rj.start : r1 - rj.start, c0 - cj.start : c1 - cj.start]
            rs, cs = _inner_rectangle(both)
            if rs.stop - rs.start < 16 or cs.stop - cs.start < 16:
                continue
            wa, wb = wa[rs, cs], wb[rs, cs]
            if min(wa.std(), wb.std()) < 20:  # glass only: noise, nothing to compare
                continue
            ncc = float(np.corrcoef(wa.ravel(), wb.ravel())[0, 1])
            # the shift that registers tile j onto tile i: their snaps' difference, else 0
            shift, _, _ = phase_cross_correlation(wa, wb, upsample_factor=10)
            out.append((ncc, float(np.abs(shift - (snaps[i] - snaps[j])).max())))
    return np.array(out)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_tiles_placed_for_export_agree_in_their_overlaps(live, name):
    agreement = _overlap_agreement(live[name].path)
    assert len(agreement) >= 50
    ncc, error_px = agreement[:, 0], agreement[:, 1]
    assert np.median(ncc) > 0.98 and ncc.min() > 0.85, np.sort(ncc)[:5]
    # each tile where the placement put it: at its stage position (resampled), or snapped to whole pixels
    # (phase correlation of 10x overlaps with noise: ~0.1 px typical, a few low-texture pairs more)
    assert np.median(error_px) <= 0.15 and np.percentile(error_px, 90) <= 0.3, np.sort(error_px)[-5:]
    assert error_px.max() < 0.75, np.sort(error_px)[-5:]


# ---------------------------------------------------------------- spots


class SpotSlide:
    """Bright Gaussian spots on a lattice at known stage positions (a slide double)."""

    def __init__(self, origin_um: tuple[float, float], pitch_um: float, n: int, sigma_um: float = 1.5):
        i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        self.xy_um = np.stack([origin_um[0] + j.ravel() * pitch_um, origin_um[1] + i.ravel() * pitch_um], 1)
        self.sigma_um = sigma_um
        self.peak = 200.0  # photons / ms: ~3200 ADU at 10 ms

    def render(self, *, center_um, pixel_size_um, shape, channel, z_um):
        h, w = shape
        x = center_um[0] + (np.arange(w) + 0.5 - w / 2) * pixel_size_um
        y = center_um[1] + (np.arange(h) + 0.5 - h / 2) * pixel_size_um
        out = np.zeros((h, w), dtype=np.float64)
        reach = 5 * self.sigma_um
        for sx, sy in self.xy_um:
            if x[0] - reach <= sx <= x[-1] + reach and y[0] - reach <= sy <= y[-1] + reach:
                gx = np.exp(-((x - sx) ** 2) / (2 * self.sigma_um**2))
                gy = np.exp(-((y - sy) ** 2) / (2 * self.sigma_um**2))
                out += self.peak * gy[:, None] * gx[None, :]
        return out.astype(np.float32)


SPOT_CENTRE_UM = (30_000.0, 12_000.0)
SPOTS = SpotSlide((SPOT_CENTRE_UM[0] - 180.0, SPOT_CENTRE_UM[1] - 180.0), 37.0, 11)
DARK_ADU = 100.0


def _spot_scan(config: str, path: Path) -> Path:
    cx, cy = SPOT_CENTRE_UM
    half = 200.0
    plan = plan_from_dict(
        {
            "name": "spots",
            "hardware_config": str(DEMO_CONFIG.parent / config),
            "output": str(path),
            "objective": "10x",
            "channels": [
                {"preset": "DAPI", "exposure_ms": 10.0, "role": "anatomy"},
                {"preset": "tdTomato", "exposure_ms": 10.0, "role": "tracer"},
            ],
            "focus": {"strategy": "fixed", "z_um": 0.0},
            "sections": [
                {
                    "id": "spots",
                    "polygon_um": [
                        [cx - half, cy - half],
                        [cx + half, cy - half],
                        [cx + half, cy + half],
                        [cx - half, cy + half],
                    ],
                    "animal": "rat01",
                    "level": "C5",
                }
            ],
        }
    )
    core = _core(config, 256)
    try:
        find_demo_hub(core).set_slide(SPOTS)
        result = ScanSession(core, plan, overwrite=True).run()
    finally:
        core.close()
    assert result.scan.complete, result.scan.message
    return path


@pytest.fixture(scope="module")
def spot_scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rotated-spots")
    return {name: _spot_scan(cfg, folder / f"{name}.h5") for name, cfg in CONFIGS.items()}


def _centroid(window: np.ndarray) -> tuple[float, float]:
    """(row, col) intensity centroid of a spot above the dark offset."""
    weights = np.clip(window.astype(np.float64) - DARK_ADU - 20.0, 0, None)
    rows, cols = np.indices(window.shape)
    return float((rows * weights).sum() / weights.sum()), float((cols * weights).sum() / weights.sum())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ome_zarr_places_every_spot_at_its_stage_position(spot_scans, name, tmp_path):
    import json

    import zarr

    (path,) = export_ome_zarr(spot_scans[name], tmp_path)
    ome = json.loads((path / "zarr.json").read_text())["attributes"]["ome"]
    transforms = {t["type"]: t for t in ome["multiscales"][0]["datasets"][0]["coordinateTransformations"]}
    _, sy, sx = transforms["scale"]["scale"]
    _, ty, tx = transforms["translation"]["translation"]
    mosaic = zarr.open_group(str(path), mode="r")["0"][0]
    reach = 6  # px: 4 σ
    errors = []
    for x, y in SPOTS.xy_um:
        r, c = round((y - ty) / sy), round((x - tx) / sx)
        if not (reach <= r < mosaic.shape[0] - reach and reach <= c < mosaic.shape[1] - reach):
            continue
        window = mosaic[r - reach : r + reach + 1, c - reach : c + reach + 1]
        if (window == 0).any():  # not imaged around it
            continue
        cr, cc = _centroid(window)
        found = (tx + (c - reach + cc) * sx, ty + (r - reach + cr) * sy)
        errors.append(np.hypot(found[0] - x, found[1] - y))
    errors_px = np.array(errors) / sx
    assert len(errors_px) >= 90  # the 11 × 11 spots inside the scanned square
    # within a pixel: exact orientations snap each tile to the nearest whole pixel (≤ ½ px)
    assert errors_px.max() < 1.0, (errors_px.max(), errors_px.mean())
    print(
        f"\nOME-Zarr {name}: {len(errors_px)} spots, "
        f"error mean {errors_px.mean():.3f} max {errors_px.max():.3f} px"
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bdv_views_place_every_spot_at_its_stage_position(spot_scans, name, tmp_path):
    import npy2bdv

    xml_path = export_bdv(spot_scans[name], tmp_path)
    with ScanFile.open(spot_scans[name]) as scan:
        sec = scan.section("spots")
        centres, affine, (h, w), p = sec.tile_xy_um, sec.pixel_affine_um, sec.tile_shape_px, sec.pixel_size_um
        done = [int(t) for t in sec.done_indices()]
    editor = npy2bdv.BdvEditor(str(xml_path), mode="r")
    reach = 6
    errors = []
    try:
        for t in done:
            view = editor.read_view(channel=0, tile=t)[0]  # (H, W), as the camera took it
            m = editor.read_affine(channel=0, tile=t, index=0)
            for x, y in SPOTS.xy_um:
                # where the camera should see it (the scan's own geometry), to cut a window
                rr, cc = stage_to_pixel(x, y, center_um=centres[t], affine_um=affine, tile_shape=(h, w))
                r, c = round(float(rr)), round(float(cc))
                if not (reach <= r < h - reach and reach <= c < w - reach):
                    continue
                wr, wc = _centroid(view[r - reach : r + reach + 1, c - reach : c + reach + 1])
                # BigStitcher: view pixel (x = column, y = row, z) → world in calibrated pixels
                world = m @ np.array([c - reach + wc, r - reach + wr, 0.0, 1.0])
                errors.append(np.hypot(world[0] * p - x, world[1] * p - y))
    finally:
        editor.finalize()
    errors_px = np.array(errors) / p
    assert len(errors_px) >= 100  # spots seen in several tiles each
    assert errors_px.max() < 0.5, (errors_px.max(), errors_px.mean())
    print(
        f"\nBDV {name}: {len(errors_px)} spot views, "
        f"error mean {errors_px.mean():.3f} max {errors_px.max():.3f} px"
    )
