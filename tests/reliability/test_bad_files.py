"""Damaged and hand-edited scan files: one-line refusals (exit code 2) from every command that reads them.

Each case damages a copy of a finished, analysed scan as a failing disk, a
cut-short copy or a curious user with h5py could; ``info``, ``analyze``,
``export`` and ``scan --resume`` must each say what is wrong in one line,
never trace back, never move the stage and leave the file as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.reliability.helpers import SECTION, assert_refused, run_cli

S = f"sections/{SECTION}"
ALL = ("info", "analyze", "export", "resume")


@dataclass(frozen=True)
class FileCase:
    """``damage`` applied to the scan file; the commands that must refuse it; what the error names."""

    id: str
    damage: Callable[[Path], None]
    needles: tuple[str, ...]
    commands: tuple[str, ...] = ALL


def _h5(edit: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            edit(f)

    return damage


def _drop(name: str) -> Callable[[Path], None]:
    return _h5(lambda f: f.__delitem__(name))


def _drop_attr(obj: str, name: str) -> Callable[[Path], None]:
    return _h5(lambda f: f[obj].attrs.__delitem__(name))


def _set_attr(obj: str, name: str, value: object) -> Callable[[Path], None]:
    def edit(f: h5py.File) -> None:
        f[obj].attrs[name] = value

    return _h5(edit)


def _replace(name: str, data: np.ndarray) -> Callable[[Path], None]:
    def edit(f: h5py.File) -> None:
        del f[name]
        f.create_dataset(name, data=data)

    return _h5(edit)


def _status_value(value: int) -> Callable[[Path], None]:
    def edit(f: h5py.File) -> None:
        f[f"{S}/tile_status"][3] = value

    return _h5(edit)


def _truncate(keep: Callable[[int], int]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        os.truncate(path, keep(path.stat().st_size))

    return damage


def _overwrite_start(data: bytes) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        with path.open("r+b") as fh:
            fh.write(data)

    return damage


def _replace_file(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


def _other_hdf5(path: Path) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.arange(10))


def _plan_text(change: Callable[[str], str]) -> Callable[[Path], None]:
    def edit(f: h5py.File) -> None:
        text = f["plan"].asstr()[()]
        del f["plan"]
        f.create_dataset("plan", data=change(text), dtype=h5py.string_dtype("utf-8"))

    return _h5(edit)


def _bad_event(f: h5py.File) -> None:
    events = f["events"]
    events[0] = "{not json"


def _newer_analysis(f: h5py.File) -> None:
    f[f"{S}/analysis"].attrs["format_version"] = 99


def _sections_entry_dataset(f: h5py.File) -> None:
    f["sections"].create_dataset("stray", data=np.zeros(3))


CASES = [
    FileCase("not-hdf5", _replace_file(b"section,area\nrat01,12\n"), ("not a readable HDF5 file",)),
    FileCase("empty", _replace_file(b""), ("not a readable HDF5 file",)),
    FileCase("other-hdf5", _other_hdf5, ("not a CordScope scan file",)),
    FileCase("format-other", _set_attr("/", "format", "zarr-thing"), ("its format is 'zarr-thing'",)),
    FileCase("format-missing", _drop_attr("/", "format"), ("no 'format' attribute",)),
    FileCase("version-99", _set_attr("/", "format_version", 99), ("version 99", "Update CordScope")),
    FileCase("version-text", _set_attr("/", "format_version", "one"), ("format_version",)),
    FileCase("created-missing", _drop_attr("/", "created"), ("'created'", "damaged")),
    FileCase("software-missing", _drop_attr("/", "software_json"), ("'software_json'",)),
    FileCase("plan-missing", _drop("plan"), ("'plan' dataset",)),
    FileCase(
        "plan-a-group", _h5(lambda f: (f.__delitem__("plan"), f.create_group("plan"))), ("'plan' dataset",)
    ),
    FileCase("hardware-missing", _drop("hardware"), ("'hardware' group",)),
    FileCase("sections-missing", _drop("sections"), ("'sections' group",)),
    FileCase("events-missing", _drop("events"), ("'events' dataset",)),
    FileCase("tiles-missing", _drop(f"{S}/tiles"), ("'tiles' dataset",)),
    FileCase("xy-missing", _drop(f"{S}/tile_xy_um"), ("'tile_xy_um' dataset",)),
    FileCase("z-missing", _drop(f"{S}/tile_z_um"), ("'tile_z_um' dataset",)),
    FileCase("status-missing", _drop(f"{S}/tile_status"), ("'tile_status' dataset",)),
    FileCase("meta-missing", _drop(f"{S}/tile_meta"), ("'tile_meta' dataset",)),
    FileCase(
        "status-shape", _replace(f"{S}/tile_status", np.zeros(99, np.uint8)), ("'tile_status' has shape",)
    ),
    FileCase("xy-shape", _replace(f"{S}/tile_xy_um", np.zeros((4, 3))), ("'tile_xy_um' has shape",)),
    FileCase("tiles-4d", _replace(f"{S}/tiles", np.zeros((4, 2, 8, 8), np.uint16)), ("4 dimensions",)),
    FileCase("crc-shape", _replace(f"{S}/tile_crc32", np.zeros(5, np.int64)), ("'tile_crc32' has shape",)),
    FileCase("channels-missing", _drop_attr(S, "channel_names"), ("channel_names",)),
    FileCase("channels-not-json", _set_attr(S, "channel_names", "[DAPI"), ("channel_names",)),
    FileCase(
        "channels-count", _set_attr(S, "channel_names", json.dumps(["DAPI"])), ("channel_names", "2 channels")
    ),
    FileCase("pixel-size-missing", _drop_attr(S, "pixel_size_um"), ("pixel_size_um",)),
    FileCase("pixel-size-negative", _set_attr(S, "pixel_size_um", -0.65), ("pixel_size_um",)),
    FileCase("section-a-dataset", _h5(_sections_entry_dataset), ("sections/stray is not a group",)),
    FileCase(
        "status-7", _status_value(7), ("status 7", "cordscope scan --resume"), ("info", "analyze", "export")
    ),
    FileCase("status-255", _status_value(255), ("status 255",), ("info", "analyze", "export")),
    FileCase("superblock-zeroed", _overwrite_start(bytes(8)), ("not a readable HDF5 file",)),
    FileCase("truncated-100-bytes", _truncate(lambda n: 100), ("bytes short",)),
    FileCase("event-not-json", _h5(_bad_event), ("event", "not JSON"), ("info",)),
    FileCase(
        "plan-not-yaml", _plan_text(lambda t: t + "\n  : [\n"), ("/plan", "YAML"), ("analyze", "resume")
    ),
    FileCase(
        "plan-bad-analysis",
        _plan_text(lambda t: t.replace("heatmap_bin_um: 50.0", "heatmap_bin_um: -5")),
        ("heatmap_bin_um",),
        ("analyze", "resume"),
    ),
    FileCase("analysis-newer", _h5(_newer_analysis), ("version 99",), ("export",)),
]


def _argv(command: str, scan: Path) -> list[object]:
    return {
        "info": ["info", scan],
        "analyze": ["analyze", scan],
        "export": ["export", scan, "--format", "csv", "--out", scan.parent / "out.csv"],
        "resume": ["scan", "--resume", scan, "--no-analysis"],
    }[command]


PAIRS = [(case, command) for case in CASES for command in case.commands]


@pytest.mark.parametrize(("case", "command"), PAIRS, ids=[f"{c.id}-{cmd}" for c, cmd in PAIRS])
def test_damaged_file_is_a_one_line_refusal(
    scan_copy: Path, monkeypatch, case: FileCase, command: str
) -> None:
    case.damage(scan_copy)
    run = run_cli(_argv(command, scan_copy), monkeypatch, inputs=[scan_copy])
    assert_refused(run, *case.needles)
    assert not run.motion.snaps


def test_cases_are_distinct() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 35


@pytest.mark.parametrize("command", ALL)
def test_a_folder_instead_of_a_scan_file(tmp_path: Path, monkeypatch, command: str) -> None:
    (tmp_path / "scan.h5").mkdir()
    assert_refused(run_cli(_argv(command, tmp_path / "scan.h5"), monkeypatch, inputs=[tmp_path]), "scan.h5")


@pytest.mark.parametrize("command", ALL)
def test_a_missing_scan_file(tmp_path: Path, monkeypatch, command: str) -> None:
    assert_refused(run_cli(_argv(command, tmp_path / "nope.h5"), monkeypatch), "nope.h5")


def test_analyze_of_a_file_a_scan_is_writing_is_refused(scan_copy: Path, monkeypatch) -> None:
    from acquisition.storage import ScanWriter

    writer = ScanWriter.open_for_resume(scan_copy)
    try:
        assert_refused(run_cli(["analyze", scan_copy], monkeypatch), "scan.h5")
        assert_refused(run_cli(["scan", "--resume", scan_copy], monkeypatch), "in use")
    finally:
        writer.close()
