"""The scan tab's live results: the section being scanned, redrawn on a timer, then editable once saved.

:class:`LiveFollow` shows one section of the running scan in a
:class:`~gui.region_editor.RegionEditor`: while the scan runs, a snapshot of
the live analysis rendered off the Qt thread at most every
:data:`LIVE_REFRESH_MS` (only when a tile was stored or the maps changed
since); with *Follow the scan* ticked it switches to each section as the scan
reaches it. When the scan's final analysis is written, the sections are read
from the file and their regions can be corrected here as in the Results tab.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from PyQt6.QtCore import QTimer, pyqtSignal
from PyQt6.QtWidgets import QCheckBox, QComboBox, QGroupBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from acquisition.session import ScanSession
from analysis.section_analysis import LiveSnapshot

from .region_editing import EditableSection, editable_section
from .region_editor import RegionEditor, region_files
from .results_io import LoadedScan, load_scan, reload_section, section_picture
from .section_render import SectionPicture, render_section
from .workers import run_for_widget

__all__ = ["LIVE_REFRESH_MS", "LiveFollow"]

logger = logging.getLogger(__name__)

#: Live view refresh period while scanning (ms): 4 Hz.
LIVE_REFRESH_MS = 250
#: Why the region tools are off while a scan runs.
WHILE_SCANNING = (
    "Regions can be corrected once the scan's final analysis is written (here, or in the Results tab)."
)


class LiveFollow(QGroupBox):
    """Live results of the running scan (see the module docstring).

    Signals
    -------
    tick()
        The refresh timer fired (the scan panel reads the analysis' lag then).
    message(level, text)
        For the window's log.
    """

    tick = pyqtSignal()
    message = pyqtSignal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Live results", parent)
        self.section_combo = QComboBox()
        self.follow_check = QCheckBox("Follow the scan")
        self.follow_check.setChecked(True)
        self.follow_check.setToolTip("Show the section being scanned")
        self.live = RegionEditor()
        self.live.set_editing(None, None, WHILE_SCANNING)
        top = QHBoxLayout()
        top.addWidget(QLabel("Section"))
        top.addWidget(self.section_combo, 1)
        top.addWidget(self.follow_check)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.live, 1)

        self._session: ScanSession | None = None
        self._saved: LoadedScan | None = None
        self._dirty = False
        self._job_running = False
        self._after_job: list[Callable[[], object]] = []
        self._generation = 0
        self._current_section: str | None = None
        self._section_labels: dict[str, str] = {}
        self._timer = QTimer(self)
        self._timer.setInterval(LIVE_REFRESH_MS)
        self._timer.timeout.connect(self._on_tick)
        self.section_combo.activated.connect(self._section_chosen)
        self.follow_check.toggled.connect(self._follow_toggled)
        self.live.message.connect(self.message)
        region_files().written.connect(self._regions_written)

    # ============================================================ public API

    def begin(self, session: ScanSession) -> None:
        """Follow a session that is starting: its sections in the list, the timer on, editing off."""
        self._generation += 1
        self._session, self._saved = session, None
        plan = session.plan
        self._section_labels = {
            s.id: " · ".join(v for v in (s.id, s.animal, s.group, s.level) if v) for s in plan.sections
        }
        self.section_combo.clear()
        for s in plan.sections:
            self.section_combo.addItem(self._section_labels[s.id], s.id)
        self.live.clear()
        self.live.set_editing(None, None, WHILE_SCANNING)
        self._current_section = None
        self._timer.start()

    def scan_reached(self, section_id: str | None) -> None:
        """The scan is at this section: show it if following."""
        if section_id and section_id != self._current_section:
            self._current_section = section_id
            if self.follow_check.isChecked():
                self._show_section(section_id)

    def mark_changed(self) -> None:
        """A tile was stored or the maps changed: redraw at the next tick."""
        self._dirty = True

    def end(self, path: Path | None) -> None:
        """The scan ended; ``path``: its file with the final analysis written (None: no analysis)."""
        self._timer.stop()
        if path is None:
            self._dirty = True
            self._refresh()  # the last state of the live analysis, if any
            return
        generation = self._generation

        def load() -> None:
            self._job_running = True  # reading the file: a new scan or a resume waits for it
            run_for_widget(
                self,
                lambda: load_scan(path),
                on_done=lambda scan: self._saved_loaded(generation, scan),
                on_error=lambda e: self._load_failed(path, e),
                name="cordscope-live-results",
            )

        self._when_idle(load)

    def when_idle(self, action: Callable[[], object]) -> None:
        """Run ``action`` once no drawing job reads the scan file."""
        self._when_idle(action)

    def is_active(self) -> bool:
        """Whether the refresh timer runs (a scan is being followed)."""
        return self._timer.isActive()

    def shown_section(self) -> str | None:
        """The section the live view shows."""
        sid = self.section_combo.currentData()
        return str(sid) if sid is not None else None

    # ============================================================= internals

    def _on_tick(self) -> None:
        self.tick.emit()
        self._refresh()

    def _section_chosen(self, index: int) -> None:
        sid = self.section_combo.itemData(index)
        if sid and self._current_section and sid != self._current_section:
            self.follow_check.setChecked(False)
        self._dirty = True
        self._refresh()

    def _follow_toggled(self, on: bool) -> None:
        if on and self._current_section:
            self._show_section(self._current_section)

    def _show_section(self, section_id: str) -> None:
        i = self.section_combo.findData(section_id)
        if i >= 0 and i != self.section_combo.currentIndex():
            self.section_combo.setCurrentIndex(i)
            self.live.clear()
        self._dirty = True
        if self._saved is not None:
            self._refresh()

    def _when_idle(self, action: Callable[[], object]) -> None:
        if self._job_running:
            self._after_job.append(action)
        else:
            action()

    def _job_done(self) -> None:
        self._job_running = False
        pending, self._after_job = self._after_job, []
        for action in pending:
            action()

    def _refresh(self) -> None:
        sid = self.shown_section()
        if sid is None or not self._dirty or self._job_running:
            return
        self._dirty = False
        self._job_running = True
        generation = self._generation
        saved = self._saved
        if saved is not None:
            run_for_widget(
                self,
                lambda: _saved_view(saved, sid),
                on_done=lambda shown: self._saved_ready(generation, sid, saved, *shown),
                on_error=self._failed,
                name="cordscope-live-view",
            )
            return
        session = self._session
        if session is None:
            self._job_running = False
            return
        caption_head = self._section_labels.get(sid, sid)
        plan = session.plan
        names = (plan.anatomy_channel.preset, plan.tracer_channel.preset)
        run_for_widget(
            self,
            lambda: live_picture(session, sid, caption_head, names),
            on_done=lambda picture: self._live_ready(picture if generation == self._generation else None),
            on_error=self._failed,
            name="cordscope-live-view",
        )

    def _live_ready(self, picture: SectionPicture | None) -> None:
        self._job_done()
        if picture is not None and picture.section_id == self.shown_section() and self._saved is None:
            self.live.show_picture(picture)
        if self._dirty and not self._timer.isActive():
            self._refresh()  # a change arrived while drawing and no tick will come (scan over)

    def _load_failed(self, path: Path, error: BaseException) -> None:
        self._job_done()
        self.message.emit("warning", f"cannot read the results of {path}: {error}")

    def _saved_loaded(self, generation: int, scan: LoadedScan) -> None:
        self._job_done()
        if generation != self._generation:
            return
        self._saved = scan
        self._dirty = True
        self._refresh()

    def _saved_ready(
        self,
        generation: int,
        sid: str,
        scan: LoadedScan,
        picture: SectionPicture | None,
        editable: EditableSection | None,
        reason: str,
    ) -> None:
        self._job_done()
        if generation != self._generation:
            return
        if sid != self.shown_section() or scan is not self._saved:
            self._dirty = True  # the choice or the file changed meanwhile: draw again
            self._refresh()
            return
        if picture is not None:
            self.live.show_picture(picture)
        self.live.set_editing(scan, editable, reason)
        if self._dirty:
            self._refresh()

    def _failed(self, error: BaseException) -> None:
        self._job_done()
        logger.error("live view: %s", error, exc_info=error)
        self.message.emit("warning", f"live view could not be drawn: {error}")

    def _regions_written(self, path: str, section_ids: list[str], origin: object) -> None:
        saved = self._saved
        if saved is None or Path(path).resolve() != saved.path.resolve():
            return
        if origin is self.live:
            self._saved = saved_after_write(saved, self.live)
            return
        generation = self._generation

        def reread() -> LoadedScan:
            fresh = saved
            for sid in section_ids:
                fresh = reload_section(fresh, sid)
            return fresh

        def done(fresh: LoadedScan) -> None:
            if generation == self._generation and self._saved is saved:
                self._saved = fresh
                self._dirty = self.shown_section() in section_ids
                self._refresh()

        self._when_idle(lambda: run_for_widget(self, reread, on_done=done, name="cordscope-live-reread"))


def saved_after_write(saved: LoadedScan, editor: RegionEditor) -> LoadedScan:
    """The scan the editor read back after writing (it holds the written section), else ``saved``."""
    scan = editor.scan
    return scan if scan is not None and scan.path == saved.path else saved


def _saved_view(scan: LoadedScan, sid: str) -> tuple[SectionPicture | None, EditableSection | None, str]:
    """A saved section for the live view (off the Qt thread): picture, editing state."""
    picture = section_picture(scan, sid)
    if picture is not None:
        caption = f"{picture.caption} — final analysis saved in {scan.path.name}"
        picture = dataclasses.replace(picture, caption=caption)
    editable, reason = editable_section(scan, sid)
    return picture, editable, reason


def live_picture(
    session: ScanSession, section_id: str, caption_head: str, channel_names: tuple[str, str]
) -> SectionPicture | None:
    """Snapshot and render one section of a running scan (runs off the Qt thread)."""
    try:
        snap: LiveSnapshot | None = session.snapshot(section_id)
    except ValueError:  # e.g. a finalized section with no tissue imaged: nothing to show
        return None
    if snap is None:
        return None
    regions = snap.regions
    caption = f"{caption_head} — {snap.n_tiles_analysed} of {snap.n_tiles} tiles analysed"
    if regions is None:
        caption += " (regions appear once enough tissue is imaged)"
    return render_section(
        n_tiles_analysed=snap.n_tiles_analysed,
        n_tiles=snap.n_tiles,
        section_id=section_id,
        anatomy=snap.anatomy_mosaic,
        tracer=snap.tracer_mosaic,
        mosaic_origin_um=tuple(snap.mosaic_origin_um),
        mosaic_pixel_um=snap.mosaic_pixel_um,
        pct_axonal_area=snap.maps.pct_axonal_area,
        map_origin_um=tuple(snap.maps.origin_um),
        map_bin_um=snap.maps.bin_um,
        masks=None if regions is None else regions.masks,
        mask_origin_um=None if regions is None else regions.origin_um,
        mask_pixel_um=None if regions is None else regions.pixel_size_um,
        table=snap.table,
        caption=caption,
        anatomy_name=channel_names[0],
        tracer_name=channel_names[1],
    )
