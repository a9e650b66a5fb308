"""The results panel: open a saved scan file, browse its sections, maps and tables, export.

A scan file carries its own results (``/sections/<id>/analysis/``, written
by the live analysis at the end of a scan or by ``cordscope analyze``). The
panel reads them with :func:`analysis.results.load_scan_results` and shows
each section with the same :class:`~gui.live_view.SectionDisplay` as the
live scan view. Reading, rendering, re-analysing and exporting all run off
the Qt thread (:func:`gui.workers.run_in_thread`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from acquisition.storage import ScanFile, ScanSummary
from analysis.results import SavedSection, load_scan_results
from analysis.section_analysis import channel_roles

from .live_view import SectionDisplay, SectionPicture, render_section
from .workers import Job, run_for_widget

logger = logging.getLogger(__name__)

__all__ = ["LoadedScan", "ResultsPanel", "export_figures", "load_scan", "section_picture"]


@dataclasses.dataclass(frozen=True)
class LoadedScan:
    """A scan file read for the results panel.

    Attributes
    ----------
    path : Path
    summary : ScanSummary
        Tile counts per section, size, creation time.
    plan_yaml : str
        The plan stored in the file.
    sections : dict of section id → SavedSection
        Labels and saved analysis (None if not analysed) of each section.
    """

    path: Path
    summary: ScanSummary
    plan_yaml: str
    sections: dict[str, SavedSection]

    @property
    def analysed(self) -> list[str]:
        """Sections with a saved analysis."""
        return [sid for sid, s in self.sections.items() if s.analysis is not None]


def load_scan(path: str | Path) -> LoadedScan:
    """Read a scan file's summary, plan and saved results (no recomputation).

    Raises
    ------
    acquisition.storage.StorageError
        If the file is missing or not a readable CordScope scan.
    """
    file = Path(path)
    with ScanFile.open(file) as scan:
        summary = scan.summary()
        plan_yaml = scan.plan_yaml
    return LoadedScan(file, summary, plan_yaml, load_scan_results(file))


def _pct(section: SavedSection, region: str) -> str:
    """A region's % axonal area as shown in the section list ("" without analysis or region)."""
    if section.analysis is None:
        return ""
    row = next((r for r in section.analysis.table if r.region == region), None)
    return "" if row is None or row.pct_axonal_area != row.pct_axonal_area else f"{row.pct_axonal_area:.3f}"


def _title(section: SavedSection) -> str:
    a = section.attrs
    return " · ".join(
        str(v) for v in (section.section_id, a.get("animal"), a.get("group"), a.get("level")) if v
    )


def _anatomy_tracer(scan: LoadedScan, section: SavedSection) -> tuple[int, int]:
    analysis = section.analysis
    assert analysis is not None
    tracer, anatomy = channel_roles(scan.plan_yaml, analysis.channel_names)
    return anatomy, tracer


def section_picture(scan: LoadedScan, section_id: str) -> SectionPicture | None:
    """Render one section's saved mosaic, heatmap and regions (pure: run it off the Qt thread).

    None if the section has no saved analysis.
    """
    section = scan.sections[section_id]
    analysis = section.analysis
    if analysis is None:
        return None
    anatomy = tracer = None
    anatomy_name, tracer_name = "DAPI", "tdTomato"
    origin = analysis.mosaic_origin_um if analysis.mosaic_origin_um is not None else analysis.mask_origin_um
    pixel = analysis.mosaic_pixel_um or analysis.mask_cell_um or analysis.maps.bin_um
    if analysis.mosaic is not None and analysis.channel_names:
        a, t = _anatomy_tracer(scan, section)
        anatomy, tracer = analysis.mosaic[a], analysis.mosaic[t]
        anatomy_name, tracer_name = analysis.channel_names[a], analysis.channel_names[t]
    elif analysis.masks:
        # no stored mosaic (older files): show the tissue mask as the picture
        tissue = next(iter(analysis.masks.values()))
        anatomy = tissue.astype("float32")
    if origin is None or anatomy is None:
        return None
    n_done = scan.summary.sections[section_id].done
    n_total = scan.summary.sections[section_id].n_tiles
    caption = (
        f"{_title(section)} — {section.attrs.get('orientation', '')} section, {n_done} of {n_total} tiles"
    )
    return render_section(
        section_id=section_id,
        anatomy=anatomy,
        tracer=tracer,
        mosaic_origin_um=tuple(origin),
        mosaic_pixel_um=float(pixel),
        pct_axonal_area=analysis.maps.pct_axonal_area,
        map_origin_um=tuple(analysis.maps.origin_um),
        map_bin_um=analysis.maps.bin_um,
        masks=analysis.masks,
        mask_origin_um=None if analysis.mask_origin_um is None else tuple(analysis.mask_origin_um),
        mask_pixel_um=analysis.mask_cell_um,
        table=analysis.table,
        caption=caption,
        anatomy_name=anatomy_name,
        tracer_name=tracer_name,
    )


def export_figures(scan: LoadedScan, folder: Path) -> list[Path]:
    """Write a PNG per analysed section (mosaic + % axonal area heatmap) into ``folder``.

    Files are named ``<scan>-<section>.png``, as ``cordscope scan --figures`` names them.
    """
    from analysis.figures import save_section_figure

    written = []
    for sid in scan.analysed:
        section = scan.sections[sid]
        analysis = section.analysis
        assert analysis is not None
        if analysis.mosaic is None or analysis.mosaic_origin_um is None or analysis.mosaic_pixel_um is None:
            continue
        a, _ = _anatomy_tracer(scan, section)
        title = " · ".join(
            str(v)
            for v in (
                sid,
                section.attrs.get("group"),
                section.attrs.get("level"),
                section.attrs.get("orientation"),
            )
            if v
        )
        written.append(
            save_section_figure(
                folder / f"{scan.path.stem}-{sid}.png",
                anatomy_mosaic=analysis.mosaic[a],
                mosaic_origin_um=tuple(analysis.mosaic_origin_um),
                mosaic_pixel_um=analysis.mosaic_pixel_um,
                pct_axonal_area_map=analysis.maps.pct_axonal_area,
                map_origin_um=tuple(analysis.maps.origin_um),
                map_bin_um=analysis.maps.bin_um,
                title=title,
            )
        )
    return written


class ResultsPanel(QWidget):
    """Browse the sections, mosaics, maps and region tables of a scan file; export them.

    Signals
    -------
    message(level, text)
        For the window's log and status.
    scan_loaded(path)
        A file was read and is shown.
    """

    message = pyqtSignal(str, str)
    scan_loaded = pyqtSignal(str)
    #: A section's picture is on screen (its id).
    section_shown = pyqtSignal(str)

    SECTION_COLUMNS = (
        "Section",
        "Animal",
        "Group",
        "Level",
        "Orientation",
        "Tiles",
        "Analysis",
        "% section",
        "% RST",
    )

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._scan: LoadedScan | None = None
        self._loading: Path | None = None
        self._render_generation = 0

        self.open_button = QPushButton("Open scan file…")
        self.open_button.setToolTip("Open any CordScope scan file (.h5)")
        self.file_label = QLabel("No scan file open. Scans open here when they finish.")
        self.file_label.setWordWrap(True)
        self.file_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.export_csv_button = QPushButton("Export CSV…")
        self.export_csv_button.setToolTip("Region tables of every section, one CSV")
        self.export_png_button = QPushButton("Export figures…")
        self.export_png_button.setToolTip("A PNG per section: mosaic with the % axonal area heatmap")
        self.export_plan_button = QPushButton("Export plan YAML…")
        self.export_plan_button.setToolTip("The plan stored in the file (rerun it with `cordscope scan`)")
        self.analyse_button = QPushButton("Analyse file")
        self.analyse_button.setToolTip(
            "Compute (again) the analysis of every done tile and save it in the file"
        )

        top = QHBoxLayout()
        top.addWidget(self.open_button)
        top.addWidget(self.file_label, 1)
        for b in (
            self.analyse_button,
            self.export_csv_button,
            self.export_png_button,
            self.export_plan_button,
        ):
            top.addWidget(b)

        self.section_table = QTableWidget(0, len(self.SECTION_COLUMNS))
        self.section_table.setHorizontalHeaderLabels(list(self.SECTION_COLUMNS))
        for column, tip in (
            (7, "% axonal area of the whole section"),
            (8, "% axonal area of the rubrospinal tract's territory (coronal sections)"),
        ):
            header_item = self.section_table.horizontalHeaderItem(column)
            if header_item is not None:
                header_item.setToolTip(tip)
        self.section_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.section_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.section_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.section_table.verticalHeader().setVisible(False)  # type: ignore[union-attr]
        header = self.section_table.horizontalHeader()
        assert header is not None
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        sections_box = QGroupBox("Sections")
        sl = QVBoxLayout(sections_box)
        sl.addWidget(self.section_table)

        self.display = SectionDisplay()
        self.notice = QLabel("")
        self.notice.setWordWrap(True)
        self.notice.setVisible(False)
        section_box = QGroupBox("Section")
        dl = QVBoxLayout(section_box)
        dl.addWidget(self.notice)
        dl.addWidget(self.display, 1)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(sections_box)
        splitter.addWidget(section_box)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([600, 900])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(splitter, 1)

        self.open_button.clicked.connect(self._browse_open)
        self.export_csv_button.clicked.connect(self._browse_csv)
        self.export_png_button.clicked.connect(self._browse_figures)
        self.export_plan_button.clicked.connect(self._browse_plan)
        self.analyse_button.clicked.connect(self.analyse)
        self.section_table.itemSelectionChanged.connect(self._section_selected)
        self._update_buttons()

    def _in_thread(
        self,
        fn: Any,
        *,
        on_done: Any = None,
        on_error: Any = None,
        name: str = "cordscope-job",
    ) -> Job:
        """Run ``fn`` off the Qt thread; its callbacks are dropped if this panel was deleted meanwhile."""
        return run_for_widget(self, fn, on_done=on_done, on_error=on_error, name=name)

    # ============================================================ public API

    @property
    def scan(self) -> LoadedScan | None:
        """The open scan file's contents."""
        return self._scan

    def open_scan(self, path: str | Path) -> None:
        """Show the scan file at ``path`` (read off the Qt thread)."""
        file = Path(path)
        self._loading = file
        self.file_label.setText(f"reading {file} …")
        self._update_buttons()
        self._in_thread(
            lambda: load_scan(file),
            on_done=lambda scan: self._loaded(file, scan),
            on_error=lambda e: self._load_failed(file, e),
            name="cordscope-open-scan",
        )

    def section_ids(self) -> list[str]:
        """Sections listed, in file order."""
        return list(self._scan.sections) if self._scan is not None else []

    def select_section(self, section_id: str) -> None:
        """Show one section."""
        ids = self.section_ids()
        if section_id in ids:
            self.section_table.selectRow(ids.index(section_id))

    def selected_section(self) -> str | None:
        """The section shown."""
        rows = {i.row() for i in self.section_table.selectedIndexes()}
        ids = self.section_ids()
        return ids[rows.pop()] if len(rows) == 1 and ids else None

    # ------------------------------------------------------------- exports

    def export_csv(self, path: str | Path) -> None:
        """Write the region tables of every analysed section to one CSV (off the Qt thread)."""
        scan = self._require_scan()
        if scan is None:
            return
        from analysis.results_format import write_region_csv

        out = Path(path)
        tables = {sid: scan.sections[sid].analysis.table for sid in scan.analysed}  # type: ignore[union-attr]
        labels = {sid: scan.sections[sid].attrs for sid in scan.analysed}
        self._background(
            lambda: write_region_csv(out, tables, section_attrs=labels),
            f"region tables of {len(tables)} sections written: {out}",
            f"cannot write {out}",
        )

    def export_figures(self, folder: str | Path) -> None:
        """Write a PNG per analysed section into ``folder`` (off the Qt thread)."""
        scan = self._require_scan()
        if scan is None:
            return
        out = Path(folder)

        def write() -> list[Path]:
            out.mkdir(parents=True, exist_ok=True)
            return export_figures(scan, out)

        self._background(write, f"figures written into {out}", f"cannot write figures into {out}")

    def export_plan(self, path: str | Path) -> None:
        """Write the plan stored in the file as YAML (off the Qt thread)."""
        scan = self._require_scan()
        if scan is None:
            return
        out = Path(path)
        text = scan.plan_yaml
        self._background(
            lambda: out.write_text(text, encoding="utf-8"), f"plan written: {out}", f"cannot write {out}"
        )

    def analyse(self) -> None:
        """Rerun the analysis of the open file (every done tile), save it, and show it."""
        scan = self._require_scan()
        if scan is None:
            return
        from analysis.scan_analysis import analyze_scan

        path = scan.path
        self.file_label.setText(f"analysing {path} …")
        self.analyse_button.setEnabled(False)

        def analysed(_: object) -> None:
            self.message.emit("info", f"analysis of {path.name} written")
            self.open_scan(path)

        def failed(e: BaseException) -> None:
            self.message.emit("error", f"analysis of {path.name} failed: {e}")
            self.open_scan(path)

        self._in_thread(
            lambda: analyze_scan(path), on_done=analysed, on_error=failed, name="cordscope-analyse"
        )

    # ============================================================== internals

    def _require_scan(self) -> LoadedScan | None:
        if self._scan is None:
            self.message.emit("warning", "open a scan file first")
        return self._scan

    def _background(self, fn: Any, done_text: str, error_text: str) -> None:
        self._in_thread(
            fn,
            on_done=lambda _: self.message.emit("info", done_text),
            on_error=lambda e: self.message.emit("error", f"{error_text}: {e}"),
            name="cordscope-export",
        )

    def _update_buttons(self) -> None:
        has = self._scan is not None
        analysed = has and bool(self._scan.analysed)  # type: ignore[union-attr]
        self.export_csv_button.setEnabled(analysed)
        self.export_png_button.setEnabled(analysed)
        self.export_plan_button.setEnabled(has)
        self.analyse_button.setEnabled(has)

    def _loaded(self, file: Path, scan: LoadedScan) -> None:
        if self._loading != file:
            return  # another file was asked for since
        self._loading = None
        self._scan = scan
        s = scan.summary
        duration = f", {s.duration_s / 60:.1f} min" if s.duration_s else ""
        failed = sum(x.failed for x in s.sections.values())
        self.file_label.setText(
            f"<b>{file.name}</b> — {len(scan.sections)} sections, {s.done} of {s.n_tiles} tiles done"
            + (f", {failed} failed" if failed else "")
            + f", {(s.disk_usage_bytes or s.file_size_bytes) / 1e6:.0f} MB{duration}"
            + f"; created {s.created[:19]}"
            + f"<br><small>{file}</small>"
        )
        self.file_label.setToolTip(str(file))
        table = self.section_table
        table.blockSignals(True)
        table.setRowCount(len(scan.sections))
        for i, (sid, section) in enumerate(scan.sections.items()):
            a = section.attrs
            counts = s.sections[sid]
            values = (
                sid,
                str(a.get("animal") or ""),
                str(a.get("group") or ""),
                str(a.get("level") or ""),
                str(a.get("orientation") or ""),
                f"{counts.done} / {counts.n_tiles}" + (f" ({counts.failed} failed)" if counts.failed else ""),
                "yes" if section.analysis is not None else "no",
                _pct(section, "section"),
                _pct(section, "rubrospinal_territory"),
            )
            for j, text in enumerate(values):
                item = QTableWidgetItem(text)
                if j >= 7:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                table.setItem(i, j, item)
        table.clearSelection()  # so selecting the first section below redraws it (a reopened file)
        table.blockSignals(False)
        self.display.clear()
        self._update_buttons()
        missing = [sid for sid, sec in scan.sections.items() if sec.analysis is None]
        if missing and s.done:
            self.message.emit(
                "warning",
                f"{file.name}: no saved analysis for {', '.join(missing)} (scan not finished, or no tissue "
                "imaged); 'Analyse file' computes it",
            )
        self.message.emit("info", f"opened {file}")
        self.scan_loaded.emit(str(file))
        if scan.sections:
            first = scan.analysed[0] if scan.analysed else next(iter(scan.sections))
            self.select_section(first)

    def _load_failed(self, file: Path, error: BaseException) -> None:
        if self._loading != file:
            return
        self._loading = None
        self.file_label.setText(f"could not open {file}")
        self.message.emit("error", f"cannot open {file}: {error}")
        self._update_buttons()

    def _section_selected(self) -> None:
        sid, scan = self.selected_section(), self._scan
        if sid is None or scan is None:
            return
        self._render_generation += 1
        generation = self._render_generation
        if scan.sections[sid].analysis is None:
            self.display.clear()
            self._set_notice(
                f"{sid}: no analysis saved in this file (the scan did not finish, or no tissue was imaged). "
                "Click 'Analyse file' to compute it from the tiles."
            )
            self.section_shown.emit(sid)
            return
        self._set_notice("")
        self._in_thread(
            lambda: section_picture(scan, sid),
            on_done=lambda picture: self._picture_ready(generation, sid, picture),
            on_error=lambda e: self.message.emit("error", f"cannot draw section {sid}: {e}"),
            name="cordscope-results-view",
        )

    def _set_notice(self, text: str) -> None:
        self.notice.setText(text)
        self.notice.setVisible(bool(text))

    def _picture_ready(self, generation: int, sid: str, picture: SectionPicture | None) -> None:
        if generation != self._render_generation:
            return
        if picture is None:
            self.display.clear()
            self._set_notice(f"{sid}: the file holds no mosaic for this section")
        else:
            self.display.show_picture(picture)
        self.section_shown.emit(sid)

    # ---------------------------------------------------------------- dialogs

    def _start_folder(self) -> str:
        return str(self._scan.path.parent) if self._scan is not None else str(Path.home())

    def _browse_open(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a scan file", self._start_folder(), "CordScope scan (*.h5)"
        )
        if path:
            self.open_scan(path)

    def _browse_csv(self) -> None:
        if self._scan is None:
            return
        suggestion = str(self._scan.path.with_name(self._scan.path.stem + ".regions.csv"))
        path, _ = QFileDialog.getSaveFileName(self, "Export region tables", suggestion, "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def _browse_figures(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export figures into folder", self._start_folder())
        if folder:
            self.export_figures(folder)

    def _browse_plan(self) -> None:
        if self._scan is None:
            return
        suggestion = str(self._scan.path.with_suffix(".plan.yaml"))
        path, _ = QFileDialog.getSaveFileName(self, "Export plan", suggestion, "Scan plan (*.yaml *.yml)")
        if path:
            self.export_plan(path)
