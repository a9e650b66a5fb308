"""Analysis settings from the plan: validated once, named when wrong, used by the live and offline runs."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from acquisition.demo.plans import demo_plan
from acquisition.plan import PlanError, plan_from_yaml
from acquisition.session import ScanSession
from analysis.live import AnalysisProcess
from analysis.scan_analysis import analyze_scan
from analysis.settings import (
    AnalysisSettings,
    AnalysisSettingsError,
    load_flat_fields,
    segmentation_settings,
    settings_of_scan,
)
from cordscope.cli import app
from tests.conftest import make_demo_core


def _plan_yaml(tmp_path, **analysis) -> str:
    plan = demo_plan(output=tmp_path / "s.h5", section_ids=["rat01-Th7"], analysis=analysis)
    return plan.to_yaml()


def test_defaults_when_the_plan_has_no_analysis_settings(tmp_path):
    text = _plan_yaml(tmp_path)
    assert plan_from_yaml(text).analysis == AnalysisSettings()
    s = settings_of_scan(_plan_yaml(tmp_path, heatmap_bin_um=100, threshold_method="fixed"))
    assert s.heatmap_bin_um == 100 and segmentation_settings(s).threshold_method == "fixed"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("heatmap_bin_um: 50.0", "heatmap_bin_um: 0", "analysis.heatmap_bin_um: must be > 0 (got 0)"),
        (
            "register_tiles: true",
            "register_tiles: true\n  treshold_method: auto",
            "analysis.treshold_method: unknown field 'treshold_method' (allowed: threshold_method",
        ),
        (
            "threshold_method: auto",
            "threshold_method: otsu",
            "analysis.threshold_method: must be 'auto' or 'fixed' (got 'otsu')",
        ),
        ("edge_fraction: 0.6", "edge_fraction: 1.5", "analysis.edge_fraction: must be < 1 (got 1.5)"),
        ("analysis:\n", "analysis: [bin]\nx_analysis:\n", "analysis: must be a mapping of fields"),
    ],
    ids=["zero-bin", "typo", "unknown-method", "edge-fraction", "not-a-mapping"],
)
def test_bad_settings_are_named_with_their_line_by_the_plan(tmp_path, old, new, message):
    text = _plan_yaml(tmp_path)
    assert old in text
    with pytest.raises(PlanError) as info:
        plan_from_yaml(text.replace(old, new), source="plan.yaml")
    assert message in str(info.value) and "plan.yaml:" in str(info.value)


def test_flat_fields_are_read_normalised_and_checked(tmp_path):
    blank = np.full((8, 6), 1100, dtype=np.uint16)
    blank[:, :3] = 600  # half as bright on the left (after the 100 ADU offset: 1000 vs 500)
    tifffile.imwrite(tmp_path / "flat.tif", blank)
    settings = AnalysisSettings(flat_fields={"tdTomato": "flat.tif"})
    flats = load_flat_fields(settings, ("DAPI", "tdTomato"), tile_shape=(8, 6), base_dir=tmp_path)
    assert flats[0] is None
    assert flats[1].mean() == pytest.approx(1.0)
    assert flats[1][0, 0] == pytest.approx(2 / 3) and flats[1][0, -1] == pytest.approx(4 / 3)
    with pytest.raises(AnalysisSettingsError, match=r"flat_fields.tdTomato: .*flat.tif is \(6, 8\) px"):
        load_flat_fields(settings, ("DAPI", "tdTomato"), tile_shape=(16, 16), base_dir=tmp_path)
    with pytest.raises(AnalysisSettingsError, match="no channel 'tdTomato' in the scan"):
        load_flat_fields(settings, ("DAPI", "GFP"), tile_shape=(8, 6), base_dir=tmp_path)
    with pytest.raises(AnalysisSettingsError, match="cannot read"):
        load_flat_fields(settings, ("DAPI", "tdTomato"), tile_shape=(8, 6), base_dir=tmp_path / "nowhere")


@pytest.mark.slow
def test_the_plans_settings_drive_live_and_offline_analysis(tmp_path):
    logging.getLogger("pymmcore-plus").setLevel(logging.ERROR)
    path = tmp_path / "s.h5"
    # a fixed threshold no axon reaches, 100 µm bins, registration off
    plan = demo_plan(
        output=path,
        section_ids=["rat01-Th7"],
        focus={"strategy": "fixed", "z_um": 0.0},
        analysis={
            "threshold_method": "fixed",
            "threshold_adu": 60000,
            "heatmap_bin_um": 100,
            "register_tiles": False,
        },
    )
    core = make_demo_core(sensor_px=256)
    try:
        tables = ScanSession(core, plan, analysis=AnalysisProcess).run().tables
    finally:
        core.close()
    rows = {r.region: r for r in tables["rat01-Th7"]}
    assert rows["rubrospinal_territory"].pct_axonal_area == 0.0
    with h5py.File(path, "r") as f:
        g = f["sections/rat01-Th7/analysis"]
        assert g["pct_axonal_area_map"].attrs["bin_um"] == pytest.approx(101.4)  # 26 cells of 3.9 µm
        params = json.loads(g["parameters_json"][()])
        assert "registration" not in g
    assert (
        params["settings"]["threshold_adu"] == 60000 and params["segmentation"]["threshold_method"] == "fixed"
    )
    # offline: the plan's settings again, or explicit ones
    assert analyze_scan(path)["rat01-Th7"] == tables["rat01-Th7"]
    normal = {r.region: r for r in analyze_scan(path, settings=AnalysisSettings())["rat01-Th7"]}
    assert normal["rubrospinal_territory"].pct_axonal_area > 1.0


def test_validate_names_a_bad_analysis_setting_before_loading_hardware(tmp_path):
    plan = demo_plan(output=tmp_path / "s.h5", section_ids=["rat01-Th7"])
    text = plan.to_yaml().replace("heatmap_bin_um: 50.0", "heatmap_bin_um: -5")
    (tmp_path / "plan.yaml").write_text(text)
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "plan.yaml")])
    assert result.exit_code == 2
    assert "analysis.heatmap_bin_um: must be > 0 (got -5)" in " ".join(result.output.split())
