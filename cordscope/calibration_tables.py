"""A scan's calibration on the terminal: the table of ``cordscope info``, the line of ``cordscope scan``."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from acquisition.errors import CordScopeError
from acquisition.storage import ScanFile
from analysis.scan_calibration import CalibrationReport, calibration_report

__all__ = ["print_calibration", "print_calibration_line", "read_report"]

_COLUMNS = {
    "channel": "channel",
    "offset_adu": "offset ADU",
    "read_noise_adu": "read noise ADU",
    "offset_source": "offset from",
    "dark_frames": "dark frames",
    "flat_field": "flat field (how)",
    "fall_off_pct": "fall-off %",
    "darker_than_offset": "tiles darker than offset",
    "saturated": "tiles saturated",
}


def read_report(scan: ScanFile) -> CalibrationReport | str:
    """A scan's calibration report, or why it cannot be read (a damaged calibration or analysis group)."""
    try:
        return calibration_report(scan)
    except (CordScopeError, KeyError, ValueError, OSError) as e:
        return f"calibration: cannot be read from {scan.path.name} ({type(e).__name__}: {e})"


def print_calibration(console: Console, report: CalibrationReport | str) -> None:
    """Per channel: offset, read noise, where the offset came from, flat field, tile flags; PSF; warnings."""
    if isinstance(report, str):
        console.print(f"[yellow]{report}", highlight=False)
        return
    rows = report.channel_rows()
    if rows:
        table = Table(*_COLUMNS.values(), title="calibration", title_justify="left")
        for row in rows:
            table.add_row(*(row[key] for key in _COLUMNS))
        console.print(table)
    console.print(report.psf_line(), highlight=False)
    if report.applied is None:
        console.print("not analysed yet: the flags and what is applied come with cordscope analyze")
    for line in [*report.warnings, *report.flag_lines()]:
        console.print(f"[yellow]{line}", highlight=False)


def print_calibration_line(console: Console, path: Path) -> None:
    """The calibration of a scan just made, in one line, and the tile flags (``cordscope scan``)."""
    try:
        with ScanFile.open(path) as scan:
            report = read_report(scan)
    except (CordScopeError, OSError) as e:
        report = f"calibration: cannot read it back from {path.name} ({e})"
    if isinstance(report, str):
        console.print(f"[yellow]{report}", highlight=False)
        return
    console.print(report.line(), highlight=False)
    for line in report.flag_lines():
        console.print(f"[yellow]{line}", highlight=False)
