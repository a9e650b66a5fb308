"""The streaming analysis worker beside a demo scan, and the offline rerun giving the same numbers."""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import h5py
import numpy as np
import pytest

from acquisition.controller import ScanController
from acquisition.plan import demo_plan
from acquisition.storage import ScanFile
from analysis import worker as worker_module
from analysis.results import load_scan_results
from analysis.worker import MIN_UPDATE_INTERVAL_S, AnalysisWorker, analyze_scan, region_csv_path
from tests.conftest import make_demo_core

SECTION = "rat01-Th7"  # 66 tiles at 10x with a 512² sensor


@dataclasses.dataclass
class LiveRun:
    path: object
    worker: AnalysisWorker
    result: object
    scan_s: float
    tables: dict
    update_times: list
    update_rows: list
    snapshots: list


def run_scan(path, **worker_options) -> LiveRun:
    core = make_demo_core()
    try:
        plan = demo_plan(output=path, section_ids=[SECTION], focus={"strategy": "fixed", "z_um": 0.0})
        worker = AnalysisWorker(path, **worker_options)
        times: list[float] = []
        rows: list = []
        snapshots: list = []

        def on_update(section_id, table_rows):
            times.append(time.monotonic())
            rows.append((section_id, table_rows))
            snapshots.append(worker.snapshot(section_id))

        worker.events.maps_updated.connect(on_update)
        t0 = time.perf_counter()
        result = ScanController(core, plan, extra_outputs=[worker]).run()
        scan_s = time.perf_counter() - t0
        tables = worker.finalize(timeout_s=60)
    finally:
        core.close()
    return LiveRun(path, worker, result, scan_s, tables, times, rows, snapshots)


def done_tiles(path) -> set[tuple[str, int]]:
    with ScanFile.open(path) as f:
        return {(sid, int(t)) for sid in f.section_ids for t in f.section(sid).done_indices()}


def as_tuples(rows):
    """Rows as tuples with NaN made comparable (exact equality otherwise)."""
    return [
        tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in dataclasses.astuple(r))
        for r in rows
    ]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> LiveRun:
    return run_scan(tmp_path_factory.mktemp("live") / "s.h5")


def test_every_done_tile_is_analysed_exactly_once(live):
    assert live.result.state == "finished" and live.result.complete
    done = done_tiles(live.path)
    assert len(done) == 66
    assert set(live.worker.analysis_counts) == done
    assert set(live.worker.analysis_counts.values()) == {1}
    assert live.worker.faults == []


def test_maps_updated_is_emitted_at_most_ten_times_a_second(live):
    assert live.update_times, "no maps_updated during the scan"
    gaps = np.diff(live.update_times)
    assert gaps.size == 0 or gaps.min() >= MIN_UPDATE_INTERVAL_S * 0.9
    section_id, rows = live.update_rows[-1]
    assert section_id == SECTION
    assert {r.region for r in rows} >= {"section", "gray_matter", "white_matter", "rubrospinal_territory"}


def test_final_table_is_plausible(live):
    rows = {r.region: r for r in live.tables[SECTION]}
    assert rows["section"].imaged_fraction > 0.99
    # the tracer is contralateral to the injection: the rubrospinal territory is brightest
    assert rows["rubrospinal_territory"].pct_axonal_area > 3 * rows["section"].pct_axonal_area > 0


def test_offline_rerun_gives_the_same_table_and_writes_the_outputs(live):
    offline = analyze_scan(live.path)
    assert list(offline) == [SECTION]
    assert as_tuples(offline[SECTION]) == as_tuples(live.tables[SECTION])
    with h5py.File(live.path, "r") as f:
        g = f[f"sections/{SECTION}/analysis"]
        table = g["regions_table"][()]
        assert [r.decode() if isinstance(r, bytes) else r for r in table["region"]] == [
            r.region for r in offline[SECTION]
        ]
        assert g["pct_axonal_area_map"].ndim == 2
        assert g["masks/section"][()].any()
        assert "dark_offset_adu" in g["parameters_json"][()].decode()
    csv_text = region_csv_path(live.path).read_text()
    assert csv_text.startswith("section_id,animal,group,level,region,region_kind")
    assert csv_text.count(SECTION) == len(offline[SECTION])


def test_saved_results_read_back_with_mosaic_and_labels(live):
    saved = load_scan_results(live.path)
    assert list(saved) == [SECTION]
    sec = saved[SECTION]
    assert sec.attrs["level"] == "Th7" and sec.attrs["group"] == "intact"
    assert sec.analysis is not None
    assert as_tuples(sec.analysis.table) == as_tuples(live.tables[SECTION])
    assert sec.analysis.channel_names == ("DAPI", "tdTomato")
    mosaic = sec.analysis.mosaic
    assert mosaic is not None and mosaic.shape[0] == 2 and mosaic.dtype == np.float32
    assert sec.analysis.mosaic_pixel_um == pytest.approx(3.9)
    # the mosaic and the masks share one grid
    assert mosaic.shape[1:] == sec.analysis.masks["section"].shape
    assert sec.analysis.mask_cell_um == pytest.approx(sec.analysis.mosaic_pixel_um)
    assert set(sec.analysis.masks) >= {"section", "gray_matter", "rubrospinal_territory"}
    tissue = sec.analysis.masks["section"]
    dapi = mosaic[sec.analysis.parameters["anatomy_channel"]]
    assert np.nanmean(dapi[tissue]) > 3 * np.nanmean(dapi[~tissue])  # DAPI is brighter in tissue


def test_snapshots_live_and_after_finalize(live):
    assert live.worker.snapshot("no-such-section") is None
    mid = live.snapshots[len(live.snapshots) // 2]
    assert 0 < mid.n_tiles_analysed < mid.n_tiles == 66
    assert np.isnan(mid.anatomy_mosaic).any()  # still growing
    final = live.worker.snapshot(SECTION)  # after finalize: read from the file
    assert final is not None and final.n_tiles_analysed == 66
    assert as_tuples(final.table) == as_tuples(live.tables[SECTION])
    assert final.regions is not None and set(final.masks) == {r.region for r in final.table}
    saved = load_scan_results(live.path)[SECTION].analysis
    np.testing.assert_array_equal(final.maps.pct_axonal_area, saved.maps.pct_axonal_area)
    # a live snapshot is a copy: writing into it changes nothing in the worker
    before = live.worker.snapshot(SECTION).anatomy_mosaic
    mid.anatomy_mosaic[...] = 1e9
    final.anatomy_mosaic[...] = 1e9
    np.testing.assert_array_equal(live.worker.snapshot(SECTION).anatomy_mosaic, before)
    assert np.nanmax(live.snapshots[-1].anatomy_mosaic) < 1e9


def test_slow_analysis_with_a_tiny_queue_rereads_skipped_tiles(live, tmp_path, monkeypatch):
    original = worker_module.SectionAnalysis.add_tile

    def slow_add_tile(self, images, **kwargs):
        time.sleep(0.05)
        original(self, images, **kwargs)

    monkeypatch.setattr(worker_module.SectionAnalysis, "add_tile", slow_add_tile)
    slow = run_scan(tmp_path / "s.h5", queue_size=1)
    assert slow.result.complete
    assert slow.worker.skipped > 10  # the analysis fell behind...
    assert set(slow.worker.analysis_counts) == done_tiles(slow.path)  # ...and caught up from the file
    assert set(slow.worker.analysis_counts.values()) == {1}
    # 66 tiles × 50 ms of analysis did not hold the scan back (its analysis alone takes > 3.3 s)
    assert slow.scan_s < 1.5 * live.scan_s + 1.0
    # tiles arrived out of order, yet the numbers are those of the offline rerun
    monkeypatch.undo()
    assert as_tuples(analyze_scan(slow.path)[SECTION]) == as_tuples(slow.tables[SECTION])


def test_an_analysis_fault_is_logged_with_its_tile_and_the_scan_goes_on(tmp_path, monkeypatch, caplog):
    original = worker_module.SectionAnalysis.add_tile

    def failing_add_tile(self, images, *, tile_index, **kwargs):
        if tile_index == 5:
            raise RuntimeError("segmentation exploded")
        original(self, images, tile_index=tile_index, **kwargs)

    monkeypatch.setattr(worker_module.SectionAnalysis, "add_tile", failing_add_tile)
    with caplog.at_level(logging.ERROR, logger="analysis.worker"):
        run = run_scan(tmp_path / "s.h5")
    assert run.result.state == "finished" and run.result.complete
    assert [(f.section_id, f.tile_index) for f in run.worker.faults] == [(SECTION, 5)]
    assert f"{SECTION}/5" in caplog.text and "segmentation exploded" in caplog.text
    assert set(run.worker.analysis_counts.values()) == {1}
    assert len(run.worker.analysis_counts) == 66
    assert run.tables[SECTION]  # the other 65 tiles made a table
