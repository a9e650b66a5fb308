"""``cordscope export``: runs an export of :mod:`analysis.exports` behind a rich progress bar."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from analysis.exports import (
    EXPORT_FORMATS,
    ExportError,
    ExportProgress,
    export_bdv,
    export_csv,
    export_ome_zarr,
)

__all__ = ["run_export"]


def run_export(
    scan_file: Path, export_format: str, out: Path | None, *, overwrite: bool, console: Console
) -> list[Path]:
    """Export ``scan_file`` in ``export_format`` to ``out``, showing progress; return what was written.

    Raises
    ------
    ExportError
        Unknown format, a missing ``--out`` (BDV and OME-Zarr need a folder),
        or an export that cannot be done (see :mod:`analysis.exports`).
    """
    fmt = export_format.lower()
    if fmt not in EXPORT_FORMATS:
        raise ExportError(
            f"unknown export format {export_format!r}; choose one of: {', '.join(EXPORT_FORMATS)}"
        )
    if fmt != "csv" and out is None:
        raise ExportError(f"--format {fmt} writes a folder: give it with --out DIR")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"{fmt} export", total=None)

        def show(step: ExportProgress) -> None:
            bar.update(
                task,
                completed=step.done,
                total=step.total,
                description=f"{fmt}: {step.section_id} {step.what}",
            )

        if fmt == "bdv":
            assert out is not None
            return [export_bdv(scan_file, out, overwrite=overwrite, progress=show)]
        if fmt == "ome-zarr":
            assert out is not None
            return export_ome_zarr(scan_file, out, overwrite=overwrite, progress=show)
        if fmt == "qupath":
            from analysis.qupath import export_qupath

            assert out is not None
            return export_qupath(scan_file, out, overwrite=overwrite, progress=show)
        return [export_csv(scan_file, out, progress=show)]
