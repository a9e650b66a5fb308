"""Every scan's analysis applies the scan's own calibration: dark frames, flat field, PSF; tile flags.

Scans of rat01-Th7 (60 tiles at 10x, 512² sensor) on the demo microscope with
the live analysis process, then the same files analysed offline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from acquisition.calibration import flat_file, psf_file
from acquisition.demo.devices import vignetting_map
from acquisition.demo.plans import demo_plan
from acquisition.hardware import build_core
from acquisition.session import ScanSession
from acquisition.storage import ScanFile
from analysis.calibration import write_calibration_file
from analysis.flatfield import FlatField
from analysis.live import AnalysisProcess
from analysis.psf import gaussian_psf
from analysis.results_format import read_analysis, read_tile_flags
from analysis.scan_analysis import analyze_scan
from analysis.scan_calibration import calibration_report
from analysis.settings import AnalysisSettings, settings_of_scan

REPO = Path(__file__).resolve().parents[2]
SECTION = "rat01-Th7"
VIGNETTING_PCT = 20.0
DEMO_PSF_SIGMA_UM = 0.45 * 0.65  # the demo slide's in-focus optics at 10x (acquisition.demo._slide_render)


def scan(path: Path, *, config: Path | None = None, **camera: object) -> Path:
    """Scan rat01-Th7 with the live analysis process; camera properties as given."""
    core = build_core(config)
    try:
        for prop, value in {"SensorWidth": 512, "SensorHeight": 512, "NoiseSeed": 5, **camera}.items():
            core.setProperty("Camera", prop, value)
        plan = demo_plan(output=path, section_ids=[SECTION], focus={"strategy": "fixed", "z_um": 0.0})
        result = ScanSession(core, plan, analysis=AnalysisProcess, overwrite=True).run()
    finally:
        core.close()
    assert result.complete, result
    return path


def params(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return read_analysis(f[f"sections/{SECTION}/analysis"], with_mosaic=False).parameters


def table(path: Path) -> dict[str, tuple[float, float, float]]:
    with h5py.File(path, "r") as f:
        rows = read_analysis(f[f"sections/{SECTION}/analysis"], with_mosaic=False).table
    return {r.region: (r.pct_axonal_area, r.mean_tracer_intensity, r.axon_area_um2) for r in rows}


def flags(path: Path):
    with h5py.File(path, "r") as f:
        return read_tile_flags(f[f"sections/{SECTION}/analysis"])


def copy(src: Path, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copy(src, dst)
    return dst


def offline(path: Path, **settings: object) -> Path:
    stored = {}
    if settings:
        with ScanFile.open(path) as f:
            stored = settings_of_scan(f.plan_yaml).model_dump()
    analyze_scan(path, settings=AnalysisSettings.model_validate({**stored, **settings}) if settings else None)
    return path


# ---------------------------------------------------------------- an 8-bit camera


@pytest.fixture(scope="module")
def eight_bit(tmp_path_factory) -> Path:
    """An 8-bit camera whose offset is 20 ADU, not the plan's 100 (the issue's case), scanned live."""
    path = tmp_path_factory.mktemp("eight-bit") / "s.h5"
    return scan(path, BitDepth=8, DarkOffset_ADU=20.0, Gain_e_per_ADU=2.0)


@pytest.mark.slow
def test_the_offset_comes_from_the_dark_frames_and_intensities_are_positive(eight_bit):
    p = params(eight_bit)
    assert p["settings"]["dark_offset_adu"] == 100.0  # the plan's default, wrong for this camera
    for channel in ("DAPI", "tdTomato"):
        assert p["dark_offsets_adu"][channel] == pytest.approx(20.0, abs=0.3)
        dark = p["calibration"]["dark"][channel]
        assert dark["source"] == "dark_frames" and dark["bit_depth"] == 8 and dark["n_frames"] == 4
        assert 0.2 < dark["read_noise_adu"] < 2.0
    assert p["dark_offset_adu"] == p["dark_offsets_adu"]["tdTomato"]
    rows = table(eight_bit)
    assert all(mean > 0 for _, mean, _ in rows.values()), rows
    f = flags(eight_bit)
    assert f.analysed.all() and not f.darker_than_offset.any()


@pytest.mark.slow
def test_live_and_offline_numbers_are_identical(eight_bit, tmp_path):
    again = offline(copy(eight_bit, tmp_path, "again.h5"))
    assert table(again) == table(eight_bit)
    assert params(again)["calibration"] == params(eight_bit)["calibration"]
    a, b = flags(again), flags(eight_bit)
    np.testing.assert_array_equal(a.n_saturated, b.n_saturated)
    np.testing.assert_array_equal(a.background_adu, b.background_adu)


@pytest.mark.slow
def test_saturated_pixels_are_counted_per_tile_at_the_cameras_bit_depth(eight_bit):
    f = flags(eight_bit)
    with ScanFile.open(eight_bit) as s:
        tiles = np.stack([s.section(SECTION).read_tile(t)[:, 0] for t in range(s.section(SECTION).n_tiles)])
        report = calibration_report(s)
        record = json.loads(s.calibration_group.attrs["applied_json"])
    np.testing.assert_array_equal(f.n_saturated, (tiles >= 255).sum(axis=(2, 3)))
    assert f.bit_depths == (8, 8)
    for c, channel in enumerate(("DAPI", "tdTomato")):
        summary = report.flags[channel]
        assert summary.n_tiles == len(tiles)
        assert summary.n_with_saturation == int((f.n_saturated[:, c] > 0).sum()) > 0
        assert summary.n_saturated_pixels == int(f.n_saturated[:, c].sum())
        assert record["flags"][channel]["n_with_saturation"] == summary.n_with_saturation
    assert any("saturated pixels" in line and "shorten the exposure" in line for line in report.flag_lines())


@pytest.mark.slow
def test_a_plan_that_fixes_a_wrong_offset_gets_every_tile_flagged(eight_bit, tmp_path):
    fixed = offline(copy(eight_bit, tmp_path, "fixed.h5"), dark_offset_from="plan")
    p = params(fixed)
    assert p["dark_offsets_adu"] == {"DAPI": 100.0, "tdTomato": 100.0}
    assert p["calibration"]["dark"]["tdTomato"]["source"] == "plan"
    assert flags(fixed).darker_than_offset.all()
    assert all(mean < 0 for _, mean, _ in table(fixed).values())  # what the issue saw: −71
    with ScanFile.open(fixed) as s:
        lines = calibration_report(s).flag_lines()
        n = s.section(SECTION).n_tiles
    assert lines[0] == (
        f"DAPI: {n} of {n} tiles are darker than the camera offset: the offset is wrong for this camera "
        "(measure dark frames) or the camera drifted"
    )


# ------------------------------------------------------------ a file without calibration


@pytest.mark.slow
def test_a_file_without_calibration_falls_back_and_says_so(eight_bit, tmp_path, caplog):
    old = copy(eight_bit, tmp_path, "old.h5")
    with h5py.File(old, "r+") as f:
        del f["calibration"]
    with caplog.at_level(logging.WARNING, logger="analysis.scan_analysis"):
        offline(old)
    p = params(old)
    assert p["calibration"]["dark_offset_source"] == {"DAPI": "plan_fallback", "tdTomato": "plan_fallback"}
    warnings = p["calibration"]["warnings"]
    assert warnings[0].startswith(
        "DAPI: no dark frames in the file; subtracting the plan's dark_offset_adu 100"
    )
    assert any("no PSF calibration" in w for w in warnings)
    assert sum("no dark frames in the file" in r.getMessage() for r in caplog.records) == 2
    with ScanFile.open(old) as s:
        n = s.section(SECTION).n_tiles
    assert any(f"{n} of {n} tiles are darker" in r.getMessage() for r in caplog.records)


# ----------------------------------------------- calibration files beside the configuration


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    """A scan with a PSF and a tdTomato flat field in the configuration's calibration folder.

    The camera has 20 % vignetting; the flat field is the camera's own fall-off (as
    a blank field would give it), the PSF the demo optics' Gaussian.
    """
    root = tmp_path_factory.mktemp("calibrated")
    cfg = root / "rig" / "demo.cfg"
    cfg.parent.mkdir()
    shutil.copy(REPO / "hardware_configs" / "demo.cfg", cfg)
    shutil.copy(REPO / "hardware_configs" / "demo.rig.yaml", cfg.with_name("demo.rig.yaml"))
    psf = gaussian_psf(DEMO_PSF_SIGMA_UM, pixel_size_um=0.65, objective="10x", source="beads")
    where = {"channel": "tdTomato", "objective": "10x", "config_file": cfg, "pixel_size_um": 0.65}
    write_calibration_file(psf_file(cfg, "10x"), psf=psf, **where)
    image = vignetting_map((512, 512), VIGNETTING_PCT).astype(np.float32)
    flat = FlatField("tdTomato", image / image.mean(), "blank_field", 8, 0.1, "2026-12-07T10:00:00+00:00")
    write_calibration_file(flat_file(cfg, "10x", "tdTomato"), flat=flat, **where)
    return scan(root / "s.h5", config=cfg, Vignetting_pct=VIGNETTING_PCT)


@pytest.mark.slow
def test_the_psf_and_flat_field_files_are_applied(calibrated):
    p = params(calibrated)
    cal = p["calibration"]
    assert cal["object_size"] == "psf:beads" and cal["size_model"] is not None
    expected = gaussian_psf(DEMO_PSF_SIGMA_UM, pixel_size_um=0.65)
    assert cal["psf"]["fwhm_um"] == pytest.approx(expected.fwhm_um, abs=1e-3)
    source = calibrated.parent.resolve() / "rig" / "demo.calibration" / "10x-psf.h5"
    assert cal["psf"]["from"].startswith(str(source))
    assert cal["flat_fielded"] == ["tdTomato"] == p["flat_fielded_channels"]
    assert cal["flat"]["tdTomato"]["method"] == "blank_field"
    assert cal["flat"]["tdTomato"]["fall_off_pct"] == pytest.approx(VIGNETTING_PCT, abs=1.0)
    assert cal["warnings"] == []
    with ScanFile.open(calibrated) as s:
        line = calibration_report(s).line()
    channel = r"tdTomato offset (99\.9\d|100\.0\d) ADU \(dark frames, read noise 3\.\d\d\)"
    assert re.search(channel + r", flat blank_field \(10x-flat-tdTomato\.h5\)", line), line
    psf = rf"PSF beads: FWHM {expected.fwhm_um:.2f} µm \(σ 0\.34\d µm\) from 10x-psf\.h5; object size: psf:b"
    assert re.search(psf, line), line


@pytest.mark.slow
def test_live_equals_offline_with_psf_and_flat_field(calibrated, tmp_path):
    again = offline(copy(calibrated, tmp_path, "again.h5"))
    assert table(again) == table(calibrated)


@pytest.mark.slow
def test_without_the_calibration_the_numbers_change(calibrated, tmp_path):
    """The size model and the flat field make a difference: removed, the tracer numbers move."""
    bare = copy(calibrated, tmp_path, "bare.h5")
    with h5py.File(bare, "r+") as f:
        del f["calibration/psf"], f["calibration/flat"]
    offline(bare)
    with_cal, without = table(calibrated), table(bare)
    # the flat field (mean 1 over the frame) divides the tile centres, which own most of the
    # mosaic, by more than 1 and the dimmed edges by less: the mean tracer signal moves
    assert abs(without["section"][1] / with_cal["section"][1] - 1) > 0.01
    # objects get the size model's area, not their apparent one (how close either comes to the
    # truth is tests/analysis/test_accuracy*.py's subject, in focus)
    assert abs(without["section"][2] / with_cal["section"][2] - 1) > 0.02
    assert dataclasses.asdict(calibration_report_of(bare))["applied"]["object_size"] == "none"


def calibration_report_of(path: Path):
    with ScanFile.open(path) as s:
        return calibration_report(s)
