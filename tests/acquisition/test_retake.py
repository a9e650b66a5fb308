"""Every tile in focus: the sharpness check, its decisions, and retakes within the scan.

The decisions are tested on a synthetic slide imaged by a fake camera whose
blur grows with the distance from a known focus (no microscope needed); the
scan is tested on the demo microscope with local focus bumps a focus map
cannot see (``tests/acquisition/_focus_bumps.py``), against each tile's
best-focus sharpness measured afterwards.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import useq
from scipy import ndimage as ndi
from shapely import Polygon

from acquisition.controller import ScanController
from acquisition.demo import find_demo_hub
from acquisition.demo.plans import demo_plan
from acquisition.focus import sharpness
from acquisition.plan import RetakeSettings
from acquisition.retake import NeighbourSharpness, RetakeRunner, tissue_fraction
from acquisition.storage import EventKind, ScanFile
from tests.acquisition._focus_bumps import bumpy_slide
from tests.conftest import make_demo_core

pytestmark = pytest.mark.filterwarnings("error")

# ------------------------------------------------------- a synthetic slide

TILE_PX = 128
OVERLAP_PX = 24
PITCH_PX = TILE_PX - OVERLAP_PX
DARK_ADU = 100.0
#: Optics of the fake camera: in-focus blur and its growth with defocus (px of Gaussian sigma).
PSF_PX = 1.2
BLUR_PX_PER_UM = 0.22


def _slide(seed: int = 1, width: int = 8 * PITCH_PX + TILE_PX) -> np.ndarray:
    """Nuclei (points, blurred by the optics when imaged) over a whole strip of tissue."""
    rng = np.random.default_rng(seed)
    img = np.zeros((TILE_PX, width), dtype=np.float64)
    n = width * TILE_PX // 60
    img[rng.integers(0, TILE_PX, n), rng.integers(0, width, n)] = rng.uniform(300, 900, n)
    return img


class FakeCamera:
    """Images tile ``p`` of the strip, blurred by its distance from the true focus (and any extra blur)."""

    def __init__(
        self,
        slide: np.ndarray,
        true_z: dict[int, float],
        extra_blur: dict[int, float] | None = None,
        middle_z: dict[int, float] | None = None,
    ):
        self.slide = slide
        self.true_z = true_z
        self.extra_blur = extra_blur or {}
        self.middle_z = middle_z or {}  # a bump under the middle of a tile: in focus at another z
        self.snaps = 0
        self.channel: tuple[str, str] | None = None
        self.rng = np.random.default_rng(5)

    def image(self, p: int, z: float, channel: str = "DAPI") -> np.ndarray:
        part = self.slide[:, p * PITCH_PX : p * PITCH_PX + TILE_PX]

        def optics(true_z: float) -> np.ndarray:
            defocus = BLUR_PX_PER_UM * (z - true_z)
            sigma = np.sqrt(PSF_PX**2 + defocus**2 + self.extra_blur.get(p, 0.0) ** 2)
            return DARK_ADU + 30.0 * (part.max() > 0) + ndi.gaussian_filter(part, sigma, mode="nearest")

        img = optics(self.true_z[p])
        if p in self.middle_z:
            m = slice(OVERLAP_PX, TILE_PX - OVERLAP_PX)
            img[m, m] = optics(self.middle_z[p])[m, m]
        if channel != "DAPI":
            img = img * 0.5
        return np.clip(img + self.rng.normal(0, 2.0, img.shape), 0, 65535).astype(np.uint16)

    def snap_at(self, event: useq.MDAEvent, z_um: float) -> np.ndarray:
        self.snaps += 1
        assert event.channel is not None
        self.channel = (event.channel.group, event.channel.config)
        return self.image(int(event.index["p"]), z_um, event.channel.config)

    def current_channel(self) -> tuple[str, str] | None:
        return self.channel


def _event(p: int, c: int, z: float) -> useq.MDAEvent:
    config = ("DAPI", "tdTomato")[c]
    return useq.MDAEvent(
        index={"p": p, "c": c},
        channel={"config": config, "group": "Channel"},
        x_pos=p * PITCH_PX + TILE_PX / 2,
        y_pos=TILE_PX / 2,
        z_pos=z,
    )


def _runner(n_tiles: int, **settings: Any) -> RetakeRunner:
    tiles = [("S", p, p * PITCH_PX + TILE_PX / 2, TILE_PX / 2) for p in range(n_tiles)]
    neighbours = NeighbourSharpness(
        tiles,
        tile_shape_px=(TILE_PX, TILE_PX),
        pixel_affine_um=np.eye(2),
        dark_offset_adu=DARK_ADU,
        tissue_min_adu=10.0,
        min_tissue_fraction=0.2,
    )
    return RetakeRunner(
        RetakeSettings(refocus_range_um=12.0, refocus_step_um=1.0, **settings),
        neighbours,
        anatomy_channel="DAPI",
    )


def _take(camera: FakeCamera, p: int, z: float) -> dict[int, tuple[np.ndarray, useq.MDAEvent, Any]]:
    return {c: (camera.image(p, z, ("DAPI", "tdTomato")[c]), _event(p, c, z), {}) for c in (0, 1)}


def _scan(camera: FakeCamera, runner: RetakeRunner, planned_z: dict[int, float]) -> list[Any]:
    records = []
    for p in sorted(planned_z):
        frames, record = runner.settle(("S", p), _take(camera, p, planned_z[p]), camera)
        assert sorted(frames) == [0, 1]
        assert {ev.z_pos for _, ev, _ in frames.values()} == {record.final_z_um}
        records.append(record)
    return records


def _relative_sharpness(camera: FakeCamera, p: int, z: float) -> float:
    return sharpness(camera.image(p, z)) / sharpness(camera.image(p, camera.true_z[p]))


# ------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("defocus", "extra_blur", "expected"),
    [
        pytest.param({0: 0.0, 1: 0.0}, {}, ["no_reference", "accepted"], id="in-focus"),
        pytest.param(
            {0: 0.0, 1: 4.0}, {}, ["no_reference", "retaken"], id="second-tile-blurred-probe-agrees"
        ),
        pytest.param({0: 4.0, 1: 0.0}, {}, ["retaken", "accepted"], id="first-tile-blurred-found-by-probe"),
        pytest.param(
            {0: 0.0, 1: 0.0}, {1: 3.0}, ["no_reference", "probed"], id="bubble-blurred-at-every-focus"
        ),
    ],
)
def test_decisions(defocus: dict[int, float], extra_blur: dict[int, float], expected: list[str]) -> None:
    camera = FakeCamera(_slide(), true_z={0: 10.0, 1: 10.0}, extra_blur=extra_blur)
    runner = _runner(2)
    records = _scan(camera, runner, {p: 10.0 + d for p, d in defocus.items()})
    assert [r.decision for r in records] == expected
    for p, r in enumerate(records):
        if r.decision == "retaken" and p not in extra_blur:
            assert r.final_z_um == pytest.approx(10.0, abs=0.4)
            assert r.retakes == 1 and not r.still_blurred
            assert _relative_sharpness(camera, p, r.final_z_um) > 0.95
    if extra_blur:  # no focus helps: the probe says so, the tile is kept and flagged, nothing retaken
        bubble = records[1]
        assert bubble.retakes == 0 and bubble.still_blurred and bubble.final_ratio < 0.9
        assert bubble.probe_gain <= 0.05


def test_a_tile_with_only_glass_is_not_judged() -> None:
    glass = np.zeros((TILE_PX, 8 * PITCH_PX + TILE_PX))  # no nuclei, no tissue: the dark offset
    camera = FakeCamera(glass, true_z={0: 0.0})
    (record,) = _scan(camera, _runner(1), {0: 5.0})
    assert record.decision == "no_tissue" and camera.snaps == 0
    assert tissue_fraction(camera.image(0, 0.0), dark_offset_adu=DARK_ADU, tissue_min_adu=10.0) == 0.0


def test_no_retakes_allowed_keeps_the_tile() -> None:
    camera = FakeCamera(_slide(), true_z={0: 10.0, 1: 10.0})
    records = _scan(camera, _runner(2, max_retakes=0), {0: 10.0, 1: 14.0})
    assert records[1].decision == "accepted" and records[1].first_ratio < 0.9 and records[1].retakes == 0


def test_in_focus_tiles_are_never_retaken_and_seldom_probed() -> None:
    n = 9
    camera = FakeCamera(_slide(seed=2), true_z=dict.fromkeys(range(n), 0.0))
    records = _scan(camera, _runner(n), dict.fromkeys(range(n), 0.0))
    assert records[0].decision == "no_reference"
    assert all(r.decision in ("accepted", "probed") for r in records[1:])
    assert [r.retakes for r in records] == [0] * n


def test_a_bump_under_the_middle_of_a_tile_is_caught_though_its_overlaps_are_sharp() -> None:
    n = 8
    camera = FakeCamera(_slide(seed=4), true_z=dict.fromkeys(range(n), 0.0), middle_z={6: 3.0})
    records = _scan(camera, _runner(n), dict.fromkeys(range(n), 0.0))
    bumped = records[6]
    assert bumped.first_ratio is not None and bumped.first_ratio >= 0.95  # the overlaps saw nothing
    assert bumped.decision == "retaken" and bumped.probe_gain > 0.05
    assert 0.5 < bumped.final_z_um < 3.0  # a focus between the edges' and the middle's
    assert [r.decision for r in records[1:6]] == ["accepted"] * 5


def test_a_focus_map_drifting_away_is_caught_as_the_blur_adds_up() -> None:
    """Each tile only a little blurrier than the last (every neighbour ratio above the threshold)."""
    n = 24
    camera = FakeCamera(_slide(seed=3, width=n * PITCH_PX + OVERLAP_PX), true_z=dict.fromkeys(range(n), 0.0))
    planned = {p: 0.1 * p for p in range(n)}  # 0 .. 2.3 µm off
    step_ratios = [
        sharpness(camera.image(p + 1, planned[p + 1])[:, :OVERLAP_PX])
        / sharpness(camera.image(p, planned[p])[:, -OVERLAP_PX:])
        for p in range(n - 1)
    ]
    assert min(step_ratios) > 0.95  # no single comparison would call for a retake, or even a probe
    records = _scan(camera, _runner(n), planned)
    kept = [_relative_sharpness(camera, p, r.final_z_um) for p, r in enumerate(records)]
    assert min(kept) >= 0.9, kept
    assert any(r.decision == "retaken" for r in records)


# ------------------------------------------------------- on the demo scope

SECTION = "rat01-Th7"


def _scan_demo(tmp_path: Path, *, bumps: bool, retake: bool = True) -> tuple[Path, Any, Any, Any]:
    core = make_demo_core()
    hub = find_demo_hub(core)
    assert hub is not None
    centre = np.asarray(Polygon(hub.slide.section(SECTION).outline).centroid.coords[0])
    lumps = [(centre[0] + 700, centre[1] + 350, 180.0, 5.0), (centre[0] - 800, centre[1] - 200, 220.0, -4.0)]
    slide = bumpy_slide(lumps if bumps else [], slide=hub.slide)
    hub.set_slide(slide)
    path = tmp_path / f"bumps-{bumps}-{retake}.h5"
    plan = demo_plan(output=path, section_ids=[SECTION], focus={"strategy": "focus_map"})
    plan = plan.model_copy(update={"retake": plan.retake.model_copy(update={"enabled": retake})})
    result = ScanController(core, plan, overwrite=True).run()
    return path, result, core, slide


def _relative_to_best_focus(path: Path, core: Any, slide: Any) -> list[float]:
    """Each tile's DAPI sharpness over the best at its true focus ± 2 µm (tiles at least 20 % tissue)."""
    out = []
    with ScanFile.open(path) as scan:
        sec = scan.section(SECTION)
        for t in range(sec.n_tiles):
            dapi = sec.read_tile(t)[0, 0]
            if tissue_fraction(dapi, dark_offset_adu=100.0, tissue_min_adu=10.0) < 0.2:
                continue
            x, y = sec.tile_xy_um[t]
            core.setConfig("Channel", "DAPI")
            core.setExposure(20.0)
            core.setXYPosition(float(x), float(y))
            core.waitForDevice(core.getXYStageDevice())
            best = 0.0
            for dz in np.arange(-2.0, 2.01, 0.5):
                core.setPosition(float(slide.focal_plane_z_um(x, y)) + dz)
                core.waitForDevice(core.getFocusDevice())
                core.snapImage()
                best = max(best, sharpness(core.getImage()))
            out.append(sharpness(dapi) / best)
    return out


@pytest.mark.slow
def test_with_bumps_every_tile_ends_within_10_pct_of_its_best_focus(tmp_path: Path) -> None:
    logging.getLogger("pymmcore-plus").setLevel(logging.ERROR)
    path, result, core, slide = _scan_demo(tmp_path, bumps=True, retake=False)
    try:
        without = _relative_to_best_focus(path, core, slide)
    finally:
        core.close()
    assert min(without) < 0.5  # the bumps do blur tiles a focus map misses
    path, result, core, slide = _scan_demo(tmp_path, bumps=True)
    try:
        relative = _relative_to_best_focus(path, core, slide)
    finally:
        core.close()
    assert min(relative) >= 0.9, sorted(relative)[:5]
    assert result.complete and result.tiles_retaken > 0 and result.retake_time_s > 0
    with ScanFile.open(path) as scan:
        sec = scan.section(SECTION)
        records = [sec.tile_meta(t)["retake"] for t in range(sec.n_tiles)]
        retaken = [r for r in records if r["decision"] == "retaken"]
        events = [e for e in scan.events() if e["kind"] == EventKind.TILE_RETAKEN]
    assert len(retaken) == result.tiles_retaken == len(events)
    for r in retaken:
        assert r["final_z_um"] != r["planned_z_um"] and r["time_s"] > 0
        # retaken because the neighbours saw it blurred, or because the probe found a sharper focus
        assert (r["first_ratio"] is not None and r["first_ratio"] < 0.9) or r["probe_gain"] > 0.05


@pytest.mark.slow
def test_without_bumps_no_tile_is_retaken(tmp_path: Path) -> None:
    path, result, core, slide = _scan_demo(tmp_path, bumps=False)
    try:
        relative = _relative_to_best_focus(path, core, slide)
    finally:
        core.close()
    assert result.complete and result.tiles_retaken == 0
    assert min(relative) >= 0.95
    with ScanFile.open(path) as scan:
        assert not [e for e in scan.events() if e["kind"] == EventKind.TILE_RETAKEN]
