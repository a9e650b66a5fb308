"""Region tables on the terminal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Column, Table


def print_region_tables(
    console: Console, name: str, tables: Mapping[str, Sequence[Any]], *, sections: Sequence[str] = ()
) -> None:
    """Print one table per section: kind, area, axon area, % axonal area, mean tracer, imaged fraction.

    Sections in ``sections`` without a table are named (the analysis found no tissue in them).
    """
    for section_id in sections:
        if section_id not in tables:
            console.print(f"{name}: {section_id}: no region table (no tissue found in its done tiles)")
    for section_id, rows in tables.items():
        width = max((len(r.region) for r in rows), default=6)
        # a column for the part measured by a higher-resolution (adaptive) pass, when there is one
        hires = any(getattr(r, "imaged_at_hires_fraction", 0.0) > 0 for r in rows)
        table = Table(
            Column("region", no_wrap=True, min_width=width),
            "kind",
            "area mm²",
            "axon area µm²",
            "% axonal area",
            "mean tracer",
            "imaged",
            *(["at high res."] if hires else []),
            title=f"{name}: {section_id}",
        )
        for r in rows:
            table.add_row(
                r.region,
                str(getattr(r, "kind", "automatic")),
                f"{r.area_um2 / 1e6:.3f}",
                f"{r.axon_area_um2:.0f}",
                f"{r.pct_axonal_area:.3f}",
                f"{r.mean_tracer_intensity:.1f}",
                f"{100 * r.imaged_fraction:.0f} %",
                *([f"{100 * r.imaged_at_hires_fraction:.0f} %"] if hires else []),
            )
        console.print(table)
