"""``cordscope analyze --regions``: apply a GeoJSON regions file and print what changed."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from cordscope.tables import print_region_tables

__all__ = ["run_regions_import"]


def run_regions_import(console: Console, scan_file: Path, regions_file: Path, *, section: str | None) -> None:
    """Apply ``regions_file`` to ``scan_file`` (re-analysed from the stored sums); print the tables."""
    from analysis.qupath import apply_regions_file
    from analysis.results_format import region_csv_path

    results, found = apply_regions_file(scan_file, regions_file, section_id=section)
    for line in found.skipped:
        console.print(f"[yellow]skipped[/] {line}", highlight=False)
    if not results:
        console.print(f"no region changed ({len(found.unchanged)} as they were); {scan_file} is unchanged")
        return
    print_region_tables(console, scan_file.name, {sid: r.table for sid, r in results.items()})
    changed = [f"{sid}/{e.region}" for sid, edits in found.edits.items() for e in edits]
    slowest = max(r.elapsed_s for r in results.values())
    console.print(
        f"imported {', '.join(changed)} ({len(found.unchanged)} unchanged); re-analysed from the stored "
        f"sums in {slowest * 1000:.0f} ms per section; wrote {scan_file} and {region_csv_path(scan_file)}"
    )
