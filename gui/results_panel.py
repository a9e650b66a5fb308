"""The results panel: open a saved scan file, browse its sections, correct their regions, export.

A scan file carries its own results (``/sections/<id>/analysis/``, written
by the live analysis at the end of a scan or by ``cordscope analyze``). The
panel reads them (:func:`gui.results_io.load_scan`) and shows each section in
a :class:`~gui.region_editor.RegionEditor`, the live scan view's display with
the tools to correct regions and re-analyse. *Export to QuPath…* writes each
section's mosaic (OME-TIFF) and regions (GeoJSON) into a folder; *Import
GeoJSON…* brings regions drawn or edited in QuPath back. Reading, rendering,
re-analysing, importing and exporting all run off the Qt thread
(:func:`gui.workers.run_for_widget`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from .region_editing import (
    EditableSection,
    RegionsImported,
    analyse_keeping_regions,
    editable_section,
    existing_exports,
    export_for_qupath,
    import_regions_file,
)
from .region_editor import RegionEditor, region_files
from .results_io import (
    LoadedScan,
    export_figures,
    load_scan,
    reload_section,
    section_picture,
)
from .section_list import SECTION_COLUMNS, SectionList
from .section_render import SectionPicture, region_label
from .workers import Job, run_for_widget

logger = logging.getLogger(__name__)

__all__ = ["LoadedScan", "ResultsPanel", "export_figures", "load_scan", "section_picture"]


def _shown(scan: LoadedScan, sid: str) -> tuple[SectionPicture | None, EditableSection | None, str]:
    editable, reason = editable_section(scan, sid)
    return section_picture(scan, sid), editable, reason


class ResultsPanel(QWidget):
    """Browse the sections, mosaics, maps and region tables of a scan file; correct regions; export.

    Signals
    -------
    message(level, text)
        For the window's log and status.
    scan_loaded(path)
        A file was read and is shown.
    section_shown(section_id)
        A section's picture is on screen.
    regions_imported(path)
        A GeoJSON file's regions were applied to the open scan and are shown.
    """

    message = pyqtSignal(str, str)
    scan_loaded = pyqtSignal(str)
    section_shown = pyqtSignal(str)
    regions_imported = pyqtSignal(str)

    SECTION_COLUMNS = SECTION_COLUMNS

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._scan: LoadedScan | None = None
        self._loading: Path | None = None
        self._render_generation = 0
        self._file_job: Job | None = None  # an export, import or analysis of the open file

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
            "Compute (again) the analysis of every done tile and save it in the file; regions corrected "
            "by hand are kept"
        )
        self.export_qupath_button = QPushButton("Export to QuPath…")
        self.export_qupath_button.setToolTip(
            "Into a folder: per section its mosaic (pyramidal OME-TIFF) and its regions as QuPath "
            "annotations (GeoJSON). In QuPath open the .ome.tif, then File › Import objects from file"
        )
        self.import_geojson_button = QPushButton("Import GeoJSON…")
        self.import_geojson_button.setToolTip(
            "Apply regions drawn or edited in QuPath (File › Export objects as GeoJSON), or a "
            "`cordscope regions --export` file; changed regions become 'imported'"
        )
        self.file_progress = QProgressBar()
        self.file_progress.setVisible(False)
        self.file_progress.setMaximumWidth(220)

        top = QHBoxLayout()
        top.addWidget(self.open_button)
        top.addWidget(self.file_label, 1)
        top.addWidget(self.file_progress)
        buttons = QHBoxLayout()
        buttons.addWidget(self.analyse_button)
        buttons.addStretch(1)
        for b in (
            self.export_qupath_button,
            self.import_geojson_button,
            self.export_csv_button,
            self.export_png_button,
            self.export_plan_button,
        ):
            buttons.addWidget(b)

        self.section_table = SectionList()
        sections_box = QGroupBox("Sections")
        sl = QVBoxLayout(sections_box)
        sl.addWidget(self.section_table)

        self.display = RegionEditor()
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
        splitter.setSizes([560, 940])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addLayout(buttons)
        layout.addWidget(splitter, 1)

        self.open_button.clicked.connect(self._browse_open)
        self.export_csv_button.clicked.connect(self._browse_csv)
        self.export_png_button.clicked.connect(self._browse_figures)
        self.export_plan_button.clicked.connect(self._browse_plan)
        self.export_qupath_button.clicked.connect(self._browse_qupath_export)
        self.import_geojson_button.clicked.connect(self._browse_geojson_import)
        self.analyse_button.clicked.connect(self.analyse)
        self.section_table.itemSelectionChanged.connect(self._section_selected)
        self.display.message.connect(self.message)
        self.display.regions_written.connect(self._own_regions_written)
        region_files().written.connect(self._regions_written_elsewhere)
        self._update_buttons()

    def _in_thread(
        self, fn: Any, *, on_done: Any = None, on_error: Any = None, name: str = "cordscope-job"
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
        return self.section_table.section_ids()

    def select_section(self, section_id: str) -> None:
        """Show one section."""
        self.section_table.select_section(section_id)

    def selected_section(self) -> str | None:
        """The section shown."""
        return self.section_table.selected_section()

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

    def export_qupath(self, folder: str | Path, *, overwrite: bool = False) -> Job | None:
        """Per section an OME-TIFF and its regions as QuPath GeoJSON, into ``folder`` (off the Qt thread)."""
        scan = self._require_saved_scan("export to QuPath")
        if scan is None:
            return None
        out = Path(folder)
        job = Job("cordscope-qupath-export")

        def progress(p: Any) -> None:
            job.report_progress(p.done, p.total)

        job.done.connect(
            lambda files: self.message.emit("info", f"QuPath export: {len(files)} files written into {out}")
        )
        job.failed.connect(lambda e: self.message.emit("error", f"cannot export to QuPath into {out}: {e}"))
        return self._start_file_job(
            job, lambda: export_for_qupath(scan, out, overwrite=overwrite, progress=progress), "exporting"
        )

    def import_geojson(self, path: str | Path) -> Job | None:
        """Apply a regions GeoJSON file (QuPath's annotations or a stage-µm regions file) to the open scan."""
        scan = self._require_saved_scan("import regions")
        if scan is None:
            return None
        geojson, shown = Path(path), self.selected_section()
        job = Job("cordscope-geojson-import")
        job.done.connect(lambda imported: self._imported(geojson, imported))
        job.failed.connect(lambda e: self.message.emit("error", f"cannot import {geojson.name}: {e}"))
        return self._start_file_job(
            job, lambda: import_regions_file(scan, geojson, shown_section=shown), "importing regions"
        )

    def analyse(self) -> Job | None:
        """Rerun the analysis of the open file (every done tile), keep hand-made regions, save and show it."""
        scan = self._require_saved_scan("analyse the file")
        if scan is None:
            return None
        path = scan.path
        job = Job("cordscope-analyse")

        def analysed(outcome: tuple[int, list[str]]) -> None:
            n_kept, problems = outcome
            kept = f"; {n_kept} regions corrected by hand applied again" if n_kept else ""
            self.message.emit("info", f"analysis of {path.name} written{kept}")
            for problem in problems:
                self.message.emit("warning", f"regions corrected by hand not applied again: {problem}")
            self.open_scan(path)

        def failed(e: BaseException) -> None:
            self.message.emit("error", f"analysis of {path.name} failed: {e}")
            self.open_scan(path)

        job.done.connect(analysed)
        job.failed.connect(failed)
        return self._start_file_job(job, lambda: analyse_keeping_regions(path), "analysing")

    # ============================================================== internals

    def _require_scan(self) -> LoadedScan | None:
        if self._scan is None:
            self.message.emit("warning", "open a scan file first")
        return self._scan

    def _require_saved_scan(self, what: str) -> LoadedScan | None:
        """The open scan, if nothing else is working on it and no region change waits to be saved."""
        scan = self._require_scan()
        if scan is None or self._file_job is not None:
            return None
        unsaved = self.display.unsaved_sections(scan.path)
        if unsaved:
            self.message.emit(
                "warning",
                f"cannot {what} yet: regions of {', '.join(unsaved)} are changed but not saved; "
                "Re-analyse or Discard changes first",
            )
            return None
        return scan

    def _start_file_job(self, job: Job, work: Any, doing: str) -> Job:
        self._file_job = job
        self.file_progress.setRange(0, 0)
        self.file_progress.setFormat(f"{doing} %p%")
        self.file_progress.setVisible(True)
        job.progress.connect(self._file_progress)
        job.finished.connect(self._file_job_finished)
        self._update_buttons()
        return job.start(work)

    def _file_progress(self, done: int, total: int) -> None:
        self.file_progress.setRange(0, max(total, 1))
        self.file_progress.setValue(done)

    def _file_job_finished(self) -> None:
        self._file_job = None
        self.file_progress.setVisible(False)
        self._update_buttons()

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
        idle = self._file_job is None
        self.export_csv_button.setEnabled(analysed)
        self.export_png_button.setEnabled(analysed)
        self.export_plan_button.setEnabled(has)
        self.analyse_button.setEnabled(has and idle)
        self.export_qupath_button.setEnabled(has and idle)
        self.import_geojson_button.setEnabled(analysed and idle)

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
        self.section_table.show_scan(scan)  # nothing selected: selecting below redraws (a reopened file)
        self.display.clear()
        self.display.set_editing(None, None)
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
            self.display.set_editing(None, None, f"{sid} has no saved analysis")
            self._set_notice(
                f"{sid}: no analysis saved in this file (the scan did not finish, or no tissue was imaged). "
                "Click 'Analyse file' to compute it from the tiles."
            )
            self.section_shown.emit(sid)
            return
        self._set_notice("")
        self._in_thread(
            lambda: _shown(scan, sid),
            on_done=lambda shown: self._picture_ready(generation, sid, scan, *shown),
            on_error=lambda e: self.message.emit("error", f"cannot draw section {sid}: {e}"),
            name="cordscope-results-view",
        )

    def _set_notice(self, text: str) -> None:
        self.notice.setText(text)
        self.notice.setVisible(bool(text))

    def _picture_ready(
        self,
        generation: int,
        sid: str,
        scan: LoadedScan,
        picture: SectionPicture | None,
        editable: EditableSection | None,
        reason: str,
    ) -> None:
        if generation != self._render_generation:
            return
        if picture is None:
            self.display.clear()
            self.display.set_editing(None, None, reason)
            self._set_notice(f"{sid}: the file holds no mosaic for this section")
        else:
            self.display.show_picture(picture)
            self.display.set_editing(scan, editable, reason)
        self.section_shown.emit(sid)

    # ------------------------------------------------------- regions written

    def _replace_scan(self, scan: LoadedScan, section_ids: list[str]) -> None:
        self._scan = scan
        self.section_table.update_sections(scan, section_ids)

    def _own_regions_written(self, scan: LoadedScan) -> None:
        editable = self.display.editable
        if self._scan is not None and scan.path == self._scan.path and editable is not None:
            self._replace_scan(scan, [editable.section_id])

    def _regions_written_elsewhere(self, path: str, section_ids: list[str], origin: object) -> None:
        """Another editor (the live view's) wrote regions of the open file: read those sections again."""
        mine = self._scan
        if origin in (self, self.display) or mine is None or Path(path).resolve() != mine.path.resolve():
            return

        def reread() -> LoadedScan:
            fresh = mine
            for sid in section_ids:
                fresh = reload_section(fresh, sid)
            return fresh

        def done(fresh: LoadedScan) -> None:
            if self._scan is not mine:
                return
            self._replace_scan(fresh, section_ids)
            if self.selected_section() in section_ids:
                self._section_selected()

        self._in_thread(reread, on_done=done, name="cordscope-results-reread")

    def _imported(self, geojson: Path, imported: RegionsImported) -> None:
        found = imported.found
        sections = list(imported.reanalysed)
        if self._scan is not None and imported.scan.path == self._scan.path:
            self._replace_scan(imported.scan, sections)
        parts = [
            f"{sid}: " + ", ".join(f"{region_label(e.region)} imported" for e in found.edits.get(sid, []))
            for sid in sections
        ]
        text = f"{geojson.name}: " + ("; ".join(parts) if parts else "no region changed")
        if found.unchanged:
            text += f"; {len(found.unchanged)} unchanged"
        if sections:
            text += f" (re-analysed and written in {imported.elapsed_s:.1f} s)"
        self.message.emit("info", text)
        for skipped in found.skipped:
            self.message.emit("warning", f"skipped {skipped}")
        if sections:
            region_files().written.emit(str(imported.scan.path), sections, self)
        if self.selected_section() in sections:
            self._section_selected()
        self.regions_imported.emit(str(geojson))

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

    def _browse_qupath_export(self) -> None:
        scan = self._scan
        if scan is None:
            return
        folder = QFileDialog.getExistingDirectory(self, "Export to QuPath into folder", self._start_folder())
        if not folder:
            return
        out, sids = Path(folder), list(scan.sections)

        def ask(existing: list[str]) -> None:
            if existing:
                shown = ", ".join(existing[:4]) + ("…" if len(existing) > 4 else "")
                answer = QMessageBox.question(
                    self, "Replace files?", f"{out} already holds {shown}. Replace them?"
                )
                if answer != QMessageBox.StandardButton.Yes:
                    return
            self.export_qupath(out, overwrite=bool(existing))

        self._in_thread(lambda: existing_exports(out, sids), on_done=ask, name="cordscope-qupath-check")

    def _browse_geojson_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Import regions (GeoJSON)", self._start_folder(), "GeoJSON (*.geojson *.json)"
        )
        if path:
            self.import_geojson(path)
