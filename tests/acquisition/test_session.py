"""The scan session: one state machine around acquisition and a live analysis (a small double here)."""

from __future__ import annotations

import threading

import pytest

from acquisition.demo.plans import demo_plan
from acquisition.plan import PlanError
from acquisition.session import ScanSession
from acquisition.storage import ScanFile, TileStored
from tests.conftest import make_demo_core

SECTION = "rat01-Th7"


class RecordingAnalysis:
    """The smallest live analysis: it records what the session gives it."""

    def __init__(self, path, *, fail_on_tile: bool = False) -> None:
        self.path = path
        self.events = type("Events", (), {"maps_updated": _NoSignal()})()
        self.stored: list[TileStored] = []
        self.calls: list[str] = []
        self.fail_on_tile = fail_on_tile
        self.file_closed_at_finalize: bool | None = None

    def start(self) -> None:
        self.calls.append("start")

    def on_tile_stored(self, stored: TileStored) -> None:
        self.stored.append(stored)
        if self.fail_on_tile:
            raise RuntimeError("analysis bug")

    def finalize(self, *, timeout_s=None):
        self.calls.append("finalize")
        # the writer has closed the file: it opens for writing here
        import h5py

        with h5py.File(self.path, "r+"):
            self.file_closed_at_finalize = True
        return {SECTION: ["a table"]}

    def stop(self) -> None:
        self.calls.append("stop")

    def snapshot(self, section_id):
        return None

    def progress(self):
        return None


class _NoSignal:
    def connect(self, _callback) -> None:
        """The double never updates maps."""


@pytest.fixture
def core():
    c = make_demo_core(noise=False)
    yield c
    c.close()


def _plan(path):
    return demo_plan(output=path, section_ids=[SECTION], focus={"strategy": "fixed", "z_um": 0.0})


def test_states_tiles_and_final_analysis_in_order(core, tmp_path):
    made: list[RecordingAnalysis] = []

    def factory(path):
        made.append(RecordingAnalysis(path))
        return made[-1]

    session = ScanSession(core, _plan(tmp_path / "s.h5"), analysis=factory)
    states: list[str] = []
    session.events.state_changed.connect(states.append)
    result = session.run()
    assert result.complete and result.tables == {SECTION: ["a table"]}
    assert states[0] == "preparing" and "scanning" in states
    assert states[-2:] == ["finalizing", "done"] and session.state == "done"
    analysis = made[0]
    assert analysis.calls == ["start", "finalize"] and analysis.file_closed_at_finalize
    with ScanFile.open(result.path) as scan:
        n = scan.section(SECTION).n_tiles
        done = scan.section(SECTION).done_indices().tolist()
    # every tile exactly once, with its pixels and stored metadata
    assert sorted(s.tile_index for s in analysis.stored) == done == list(range(n))
    first = analysis.stored[0]
    assert first.images.shape[:2] == (2, 1) and first.meta["planned_xy_um"]
    assert first.name == f"{SECTION}/{first.tile_index:04d}"


def test_a_failing_analysis_never_stops_the_scan(core, tmp_path):
    session = ScanSession(
        core, _plan(tmp_path / "s.h5"), analysis=lambda p: RecordingAnalysis(p, fail_on_tile=True)
    )
    result = session.run()
    assert result.scan.complete
    assert len(session.analysis.stored) == result.scan.tiles_total


def test_a_plan_that_cannot_run_fails_before_anything_moves_and_stops_the_analysis(core, tmp_path):
    path = tmp_path / "s.h5"
    path.write_bytes(b"precious")
    made: list[RecordingAnalysis] = []
    session = ScanSession(core, _plan(path), analysis=lambda p: made.append(RecordingAnalysis(p)) or made[-1])
    with pytest.raises(PlanError, match="exists"):
        session.run()
    assert session.state == "failed" and made[0].calls == ["start", "stop"]
    assert path.read_bytes() == b"precious"


def test_abort_then_resume_from_the_file(core, tmp_path):
    path = tmp_path / "s.h5"
    session = ScanSession(core, _plan(path), analysis=RecordingAnalysis)
    enough = threading.Event()
    session.events.tile_stored.connect(lambda s: enough.set() if len(session.analysis.stored) >= 10 else None)
    session.start()
    assert enough.wait(60)
    session.abort("test")
    first = session.wait(60)
    assert first.scan.state == "aborted" and session.state == "done" and first.tables is not None
    resumed = ScanSession.resume(path, core, analysis=RecordingAnalysis)
    result = resumed.run()
    assert result.complete and resumed.resuming
    assert len(resumed.analysis.stored) == result.scan.tiles_total - first.scan.tiles_done
