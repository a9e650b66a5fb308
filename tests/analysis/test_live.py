"""The live analysis beside a scan session (process and thread drivers), and the offline rerun's numbers."""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import h5py
import numpy as np
import pytest

from acquisition.storage import ScanFile
from analysis import scan_analysis as scan_analysis_module
from analysis.live import MIN_UPDATE_INTERVAL_S, AnalysisProcess, AnalysisProcessError, AnalysisThread
from analysis.results import load_scan_results
from analysis.scan_analysis import analyze_scan, region_csv_path
from tests.conftest import TH7, run_live_scan


def done_tiles(path) -> set[tuple[str, int]]:
    with ScanFile.open(path) as f:
        return {(sid, int(t)) for sid in f.section_ids for t in f.section(sid).done_indices()}


def as_tuples(rows):
    """Rows as tuples with NaN made comparable (exact equality otherwise)."""
    return [
        tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in dataclasses.astuple(r))
        for r in rows
    ]


def test_every_done_tile_is_analysed_exactly_once_in_the_process(th7_live_scan):
    live = th7_live_scan
    assert live.result.complete and live.result.scan.state == "finished"
    assert live.session.state == "done"
    analysis = live.session.analysis
    assert isinstance(analysis, AnalysisProcess)
    done = done_tiles(live.path)
    assert len(done) == 60
    assert set(analysis.analysis_counts) == done and set(analysis.analysis_counts.values()) == {1}
    assert analysis.faults == []
    progress = analysis.progress()
    assert progress.tiles_stored == 60 and progress.tiles_behind == 0 and progress.behind_s == 0


def test_maps_updated_is_emitted_at_most_ten_times_a_second(th7_live_scan):
    live = th7_live_scan
    assert live.update_times, "no maps_updated during the scan"
    gaps = np.diff(live.update_times)
    assert gaps.size == 0 or gaps.min() >= MIN_UPDATE_INTERVAL_S * 0.9
    section_id, rows = live.update_rows[-1]
    assert section_id == TH7
    assert {r.region for r in rows} >= {"section", "gray_matter", "white_matter", "rubrospinal_territory"}


def test_final_table_is_plausible(th7_live_scan):
    rows = {r.region: r for r in th7_live_scan.result.tables[TH7]}
    assert rows["section"].imaged_fraction > 0.99
    # the tracer is contralateral to the injection: the rubrospinal territory is brightest
    assert rows["rubrospinal_territory"].pct_axonal_area > 3 * rows["section"].pct_axonal_area > 0


def test_offline_rerun_gives_the_same_table_and_writes_the_outputs(th7_live_scan, tmp_path):
    live = th7_live_scan
    path = tmp_path / "copy.h5"
    path.write_bytes(live.path.read_bytes())
    offline = analyze_scan(path)
    assert list(offline) == [TH7]
    assert as_tuples(offline[TH7]) == as_tuples(live.result.tables[TH7])
    with h5py.File(path, "r") as f:
        g = f[f"sections/{TH7}/analysis"]
        table = g["regions_table"][()]
        assert [r.decode() if isinstance(r, bytes) else r for r in table["region"]] == [
            r.region for r in offline[TH7]
        ]
        assert g["pct_axonal_area_map"].ndim == 2
        assert g["masks/section"][()].any()
        assert "dark_offset_adu" in g["parameters_json"][()].decode()
    csv_text = region_csv_path(path).read_text()
    assert csv_text.startswith("section_id,animal,group,level,region,region_kind")
    assert csv_text.count(TH7) == len(offline[TH7])


def test_saved_results_read_back_with_mosaic_and_labels(th7_live_scan):
    live = th7_live_scan
    saved = load_scan_results(live.path)
    assert list(saved) == [TH7]
    sec = saved[TH7]
    assert sec.attrs["level"] == "Th7" and sec.attrs["group"] == "intact"
    assert sec.analysis is not None
    assert as_tuples(sec.analysis.table) == as_tuples(live.result.tables[TH7])
    assert sec.analysis.channel_names == ("DAPI", "tdTomato")
    mosaic = sec.analysis.mosaic
    assert mosaic is not None and mosaic.shape[0] == 2 and mosaic.dtype == np.float32
    assert sec.analysis.mosaic_pixel_um == pytest.approx(3.9)
    assert mosaic.shape[1:] == sec.analysis.masks["section"].shape  # one grid for mosaic and masks
    assert set(sec.analysis.masks) >= {"section", "gray_matter", "rubrospinal_territory"}
    tissue = sec.analysis.masks["section"]
    dapi = mosaic[sec.analysis.parameters["anatomy_channel"]]
    assert np.nanmean(dapi[tissue]) > 3 * np.nanmean(dapi[~tissue])  # DAPI is brighter in tissue


def test_snapshots_while_scanning_and_after_the_end(th7_live_scan):
    live = th7_live_scan
    assert live.snapshots, "no snapshot answered while scanning"
    assert all(0 < s.n_tiles_analysed <= s.n_tiles == 60 for s in live.snapshots)
    growing = [s for s in live.snapshots if s.n_tiles_analysed < 60]
    assert not growing or np.isnan(growing[0].anatomy_mosaic).any()
    final = live.session.snapshot(TH7)  # the process has ended: read from the file
    assert final is not None and final.n_tiles_analysed == 60
    assert as_tuples(final.table) == as_tuples(live.result.tables[TH7])
    assert final.regions is not None and set(final.masks) == {r.region for r in final.table}
    assert live.session.snapshot("no-such-section") is None


# ------------------------------------------------------------------- thread


@pytest.mark.slow
def test_thread_driver_reads_back_tiles_that_did_not_fit_and_matches_offline(
    th7_live_scan, tmp_path, monkeypatch
):
    original = scan_analysis_module.SectionAnalysis.add_tile

    def slow_add_tile(self, images, **kwargs):
        time.sleep(0.03)
        original(self, images, **kwargs)

    monkeypatch.setattr(scan_analysis_module.SectionAnalysis, "add_tile", slow_add_tile)
    run = run_live_scan(tmp_path / "s.h5", driver=lambda path: AnalysisThread(path, max_queued_images=1))
    monkeypatch.undo()
    analysis = run.session.analysis
    assert run.result.complete
    assert set(analysis.analysis_counts) == done_tiles(run.path)
    assert set(analysis.analysis_counts.values()) == {1}
    # the thread and the process give the same numbers, whatever order tiles were analysed in
    assert as_tuples(run.result.tables[TH7]) == as_tuples(th7_live_scan.result.tables[TH7])


@pytest.mark.slow
def test_an_analysis_fault_is_logged_with_its_tile_and_the_scan_goes_on(tmp_path, monkeypatch, caplog):
    original = scan_analysis_module.SectionAnalysis.add_tile

    def failing_add_tile(self, images, *, tile_index, **kwargs):
        if tile_index == 5:
            raise RuntimeError("segmentation exploded")
        original(self, images, tile_index=tile_index, **kwargs)

    monkeypatch.setattr(scan_analysis_module.SectionAnalysis, "add_tile", failing_add_tile)
    with caplog.at_level(logging.ERROR, logger="analysis.scan_analysis"):
        run = run_live_scan(tmp_path / "s.h5", driver=AnalysisThread)
    analysis = run.session.analysis
    assert run.result.scan.state == "finished" and run.result.complete
    assert [(f.section_id, f.tile_index) for f in analysis.faults] == [(TH7, 5)]
    assert f"{TH7}/0005" in caplog.text and "segmentation exploded" in caplog.text
    assert len(analysis.analysis_counts) == 60
    assert run.result.tables[TH7]  # the other 65 tiles made a table


# ------------------------------------------------------------------ process


def test_stop_ends_the_process_without_results(tmp_path):
    analysis = AnalysisProcess(tmp_path / "never.h5")
    analysis.start()
    analysis.stop()
    analysis.join(60)
    assert not analysis._alive()
    with pytest.raises(AnalysisProcessError, match="stopped before the final analysis"):
        analysis.finalize(timeout_s=10)


@pytest.mark.slow
def test_a_failing_final_analysis_is_reported_and_the_tiles_are_kept(tmp_path):
    # a flat field that does not exist: the analysis cannot set up its sections
    run = run_live_scan(tmp_path / "s.h5", analysis={"flat_fields": {"tdTomato": "missing.tif"}})
    result = run.result
    assert result.scan.complete  # the scan itself is not disturbed
    assert not result.complete and result.tables is None
    assert "flat_fields.tdTomato: cannot read" in result.analysis_error
    assert len(done_tiles(run.path)) == 60
