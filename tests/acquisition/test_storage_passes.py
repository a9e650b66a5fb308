"""A section's further passes in the scan file (e.g. a 20x adaptive pass), beside format 1 as it was."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import useq

from acquisition.storage import (
    EventKind,
    MDAWriterOutput,
    ScanFile,
    ScanWriter,
    SectionLayout,
    StorageError,
    TileStatus,
    pass_key,
    split_pass_key,
    tile_name,
)
from tests.acquisition.test_storage import H, W, _complete, _create

pytestmark = pytest.mark.filterwarnings("error")


def _pass_layout(n: int = 3) -> SectionLayout:
    return SectionLayout(
        section_id="ignored",
        tile_xy_um=np.column_stack([100.0 + 5.0 * np.arange(n), np.full(n, 200.0)]),
        channel_names=("tdTomato",),
        n_z=1,
        tile_shape_px=(H, W),
        pixel_size_um=0.325,
        tile_size_um=(W * 0.325, H * 0.325),
        planned_tile_z_um=np.array([1.0, 1.1, 1.2][:n]),
    )


def _with_pass(path: Path) -> str:
    with _create(path) as writer:
        _complete(writer, 0, "S1", 0, 1)
        key = writer.add_pass(_pass_layout(), section_id="S1", name="20x", attrs={"objective": "20x"})
        writer.write_image(key, 1, 0, 0, np.full((H, W), 7, dtype=np.uint16))
        writer.complete_tile(key, 1, z_um=1.1, meta={"exposure_ms": {"tdTomato": 80.0}})
    return key


@pytest.mark.parametrize(
    ("key", "expected"),
    [("S01@20x", ("S01", "20x")), ("S01", ("S01", None)), ("rat-1.a@x_2", ("rat-1.a", "x_2"))],
)
def test_pass_keys(key: str, expected: tuple[str, str | None]) -> None:
    assert split_pass_key(key) == expected
    if expected[1] is not None:
        assert pass_key(*expected) == key  # type: ignore[arg-type]


def test_a_pass_is_written_and_read_by_its_key(tmp_path: Path) -> None:
    path = tmp_path / "scan.h5"
    key = _with_pass(path)
    assert key == "S1@20x"
    with ScanFile.open(path) as scan:
        assert scan.section_ids == ("S1", "A2")  # the passes are not sections
        assert scan.pass_keys() == ("S1@20x",) and scan.pass_keys("A2") == ()
        p = scan.section(key)
        assert p.section_id == key and p.n_tiles == 3 and p.channel_names == ("tdTomato",)
        assert p.pixel_size_um == 0.325 and p.attrs["objective"] == "20x" and p.attrs["section_id"] == "S1"
        assert list(p.tile_status) == [TileStatus.PENDING, TileStatus.DONE, TileStatus.PENDING]
        assert p.read_tile(1).shape == (1, 1, H, W) and int(p.read_tile(1).max()) == 7
        assert p.tile_meta(1)["exposure_ms"] == {"tdTomato": 80.0}
        assert scan.summary().n_tiles == 6  # sections only, as before
    with ScanWriter.open_for_resume(path) as writer:
        assert writer.section_ids == ("S1", "A2") and writer.pass_keys == (key,)
        assert list(writer.pending_tiles()[key]) == [0, 2]
        assert writer.tile_z_um(key)[1] == pytest.approx(1.1)


def test_a_reader_that_knows_no_passes_reads_the_file_as_before(tmp_path: Path) -> None:
    path = tmp_path / "scan.h5"
    _with_pass(path)
    with h5py.File(path, "r") as f:  # what a format-1 reader walks: sections and their known datasets
        assert list(f["sections"]) == ["S1", "A2"]
        s1 = f["sections/S1"]
        assert s1["tiles"].shape[0] == 4 and "analysis" in s1
        assert f["sections/S1/passes/20x"].attrs["pass_complete"] == 1
        assert int(f.attrs["format_version"]) == 1


@pytest.mark.parametrize(
    ("section", "name", "match"),
    [
        pytest.param("S9", "20x", "has no section 'S9'", id="unknown-section"),
        pytest.param("S1", "20 x", "may contain only", id="bad-name"),
        pytest.param("S1", "", "may contain only", id="empty-name"),
    ],
)
def test_bad_passes_are_refused(tmp_path: Path, section: str, name: str, match: str) -> None:
    with _create(tmp_path / "scan.h5") as writer, pytest.raises(StorageError, match=match):
        writer.add_pass(_pass_layout(), section_id=section, name=name, attrs={})


def test_a_pass_is_added_once(tmp_path: Path) -> None:
    with _create(tmp_path / "scan.h5") as writer:
        writer.add_pass(_pass_layout(), section_id="S1", name="20x", attrs={})
        with pytest.raises(StorageError, match="already has a pass '20x'"):
            writer.add_pass(_pass_layout(), section_id="S1", name="20x", attrs={})


def test_a_pass_interrupted_while_made_is_removed_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "scan.h5"
    _with_pass(path)
    with h5py.File(path, "r+") as f:  # as if the scan died before the pass was complete
        del f["sections/S1/passes/20x"].attrs["pass_complete"]
    with ScanFile.open(path) as scan:
        assert scan.pass_keys() == ()
    with ScanWriter.open_for_resume(path) as writer:
        assert writer.pass_keys == ()
    with ScanFile.open(path) as scan:
        repair = [e for e in scan.events() if e["kind"] == EventKind.REPAIR]
        assert repair and repair[-1]["passes_dropped"] == ["S1@20x"]
        with h5py.File(path, "r") as f:
            assert "20x" not in f["sections/S1/passes"]


def test_the_mda_writer_stores_pass_tiles_by_their_names(tmp_path: Path) -> None:
    path = tmp_path / "scan.h5"
    with _create(path) as writer:
        key = writer.add_pass(_pass_layout(2), section_id="S1", name="20x", attrs={})
        out = MDAWriterOutput(writer)
        stored = []
        out.events.tile_stored.connect(stored.append)
        xy = writer.tile_xy_um(key)
        seq = useq.MDASequence(
            stage_positions=[useq.Position(x=x, y=y, name=tile_name(key, t)) for t, (x, y) in enumerate(xy)],
            channels=[useq.Channel(config="tdTomato")],
            metadata={"cordscope": {"tiles": [[key, t, x, y] for t, (x, y) in enumerate(xy)]}},
        )
        out.sequenceStarted(seq)
        for event in seq:
            out.frameReady(np.ones((H, W), dtype=np.uint16), event, {})
        out.sequenceFinished(seq)
        assert [s.name for s in stored] == ["S1@20x/0000", "S1@20x/0001"]
        assert list(writer.tile_status_array(key)) == [TileStatus.DONE, TileStatus.DONE]
