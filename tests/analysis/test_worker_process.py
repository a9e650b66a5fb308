"""The live analysis in its own process: same numbers as offline, every tile once, snapshots, stop."""

from __future__ import annotations

import logging
import time

import h5py
import pytest

from acquisition.controller import ScanController
from acquisition.demo.plans import demo_plan
from acquisition.storage import ScanFile
from analysis.worker import analyze_scan
from analysis.worker_process import AnalysisProcess, AnalysisProcessError
from tests.conftest import make_demo_core

SECTIONS = ["rat01-Th7", "rat03-L2"]


def scan(path, worker, **plan_options):
    logging.getLogger("pymmcore-plus").setLevel(logging.ERROR)
    core = make_demo_core(sensor_px=256)
    try:
        plan = demo_plan(output=path, section_ids=SECTIONS, focus={"strategy": "fixed", "z_um": 0.0})
        if plan_options:
            plan = plan.model_copy(update=plan_options)
        return ScanController(core, plan, extra_outputs=[worker]).run()
    finally:
        core.close()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    path = tmp_path_factory.mktemp("process") / "s.h5"
    worker = AnalysisProcess(path)
    updates = []
    worker.events.maps_updated.connect(lambda sid, rows: updates.append((sid, rows)))
    result = scan(path, worker)
    # the process goes on analysing named tiles after the scan: wait for one, then ask it
    deadline = time.monotonic() + 60
    while not any(sid == "rat01-Th7" for sid, _ in worker.analysis_counts) and time.monotonic() < deadline:
        time.sleep(0.05)
    before = worker.snapshot("rat01-Th7")  # answered by the process, before the final analysis
    tables = worker.finalize(timeout_s=300)
    return path, worker, result, tables, updates, before


def test_every_done_tile_is_analysed_once_and_the_numbers_match_offline(finished):
    path, worker, result, tables, _, _ = finished
    assert result.complete and worker.faults == [] and worker.skipped == 0
    with ScanFile.open(path) as f:
        done = {(sid, int(t)) for sid in f.section_ids for t in f.section(sid).done_indices()}
    assert set(worker.analysis_counts) == done and set(worker.analysis_counts.values()) == {1}
    assert list(tables) == SECTIONS
    assert analyze_scan(path) == tables


def test_updates_and_snapshots_come_from_the_process(finished):
    path, worker, _, tables, updates, before = finished
    assert updates and {sid for sid, _ in updates} <= set(SECTIONS)
    assert before is not None and 0 < before.n_tiles_analysed <= before.n_tiles
    after = worker.snapshot("rat01-Th7")  # the process has ended: read from the file
    assert after is not None and after.table == tables["rat01-Th7"]
    assert not worker._process.is_alive()
    with h5py.File(path, "r") as f:
        assert "analysis" in f["sections/rat03-L2"]


def test_stop_ends_the_process_without_results(tmp_path):
    worker = AnalysisProcess(tmp_path / "never.h5")
    worker.start()
    worker.stop()
    worker.join(60)
    assert not worker._process.is_alive()
    with pytest.raises(AnalysisProcessError, match="stopped before the final analysis"):
        worker.finalize(timeout_s=10)


def test_a_failing_analysis_is_reported_not_hidden(tmp_path):
    path = tmp_path / "s.h5"
    worker = AnalysisProcess(path)
    # a flat field that does not exist: the analysis cannot set up its sections
    result = scan(path, worker, analysis={"flat_fields": {"tdTomato": "missing.tif"}})
    assert result.complete  # the scan itself is not disturbed
    with pytest.raises(AnalysisProcessError, match=r"flat_fields.tdTomato: cannot read"):
        worker.finalize(timeout_s=120)
