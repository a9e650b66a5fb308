"""Live registration through a scan: an inaccurate stage, tiles placed at their registered positions."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest

from acquisition import engine as engine_module
from acquisition.demo.plans import demo_plan
from acquisition.demo.slide import demo_slide
from acquisition.session import ScanSession
from analysis.live import AnalysisProcess
from analysis.results import load_scan_results
from analysis.scan_analysis import analyze_scan
from tests.conftest import make_demo_core

pytestmark = pytest.mark.slow

SECTION = "rat01-Th7"
POSITIONING_ERROR_UM = 3.0  # σ per axis: ~4.6 px at 10x (0.65 µm)


@pytest.fixture(scope="module")
def inaccurate_scan(tmp_path_factory):
    """A scan on a stage that lands a few µm off target; where each tile really was, per tile."""
    logging.getLogger("pymmcore-plus").setLevel(logging.ERROR)
    path = tmp_path_factory.mktemp("registration") / "s.h5"
    core = make_demo_core()
    core.setProperty("XYStage", "PositioningError_um", POSITIONING_ERROR_UM)
    core.setProperty("XYStage", "PositioningErrorSeed", 11)
    true_at: dict[tuple[float, float], tuple[float, float]] = {}
    real_snap = engine_module._snap

    def snap_recording_truth(c):
        # the stage's true position at the moment of the snap, keyed by the requested position
        requested = tuple(round(v, 3) for v in c.getXYPosition())
        true_at[requested] = (
            float(c.getProperty("XYStage", "TrueX_um")),
            float(c.getProperty("XYStage", "TrueY_um")),
        )
        return real_snap(c)

    mp = pytest.MonkeyPatch()
    mp.setattr(engine_module, "_snap", snap_recording_truth)
    try:
        plan = demo_plan(output=path, section_ids=[SECTION])  # focus map: in focus, as a user scans
        result = ScanSession(core, plan, analysis=AnalysisProcess).run()
        assert result.complete
        tables = result.tables
    finally:
        mp.undo()
        core.close()
    with h5py.File(path, "r") as f:
        planned = f[f"sections/{SECTION}/tile_xy_um"][()]
    true = np.array([true_at[tuple(round(v, 3) for v in xy)] for xy in planned])
    return path, planned, true, tables


def median_error_px(positions, true, pixel_um=0.65):
    err = positions - true
    err -= err.mean(axis=0)  # registration measures relative positions only
    return float(np.median(np.hypot(*err.T))) / pixel_um


def test_registered_positions_are_within_a_pixel_of_the_truth(inaccurate_scan):
    path, planned, true, _ = inaccurate_scan
    with h5py.File(path, "r") as f:
        g = f[f"sections/{SECTION}/analysis"]
        registered = g["registered_tile_xy_um"][()]
        params = json.loads(g["parameters_json"][()])
        pairs, used = g["registration/pairs"][()], g["registration/pair_used"][()]
    assert np.isfinite(registered).all()
    assert median_error_px(planned, true) > 2.0  # placement by requested position is off
    assert median_error_px(registered, true) <= 1.0
    assert params["tile_position"] == "registered"  # the section was rebuilt there
    assert used.sum() >= 0.8 * len(pairs) > 0


def test_the_rebuilt_section_still_measures_the_truth(inaccurate_scan):
    _, _, _, tables = inaccurate_scan
    truth = {t.region: t.pct_axonal_area for t in demo_slide().truth_table(SECTION)}
    for row in tables[SECTION]:
        if row.region in truth:
            assert row.pct_axonal_area == pytest.approx(truth[row.region], abs=0.5), row.region


def test_offline_rerun_reproduces_the_registration_and_table(inaccurate_scan, tmp_path):
    path, *_ = inaccurate_scan
    live = load_scan_results(path)[SECTION].analysis
    with h5py.File(path, "r") as f:
        live_positions = f[f"sections/{SECTION}/analysis/registered_tile_xy_um"][()]
    offline = analyze_scan(path)
    assert [(r.region, r.pct_axonal_area, r.area_um2) for r in offline[SECTION]] == [
        (r.region, r.pct_axonal_area, r.area_um2) for r in live.table
    ]
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(
            f[f"sections/{SECTION}/analysis/registered_tile_xy_um"][()], live_positions
        )
