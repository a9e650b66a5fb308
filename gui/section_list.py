"""The Results tab's list of a scan file's sections: labels, tiles, analysis, headline numbers.

One row per section of a :class:`~gui.results_io.LoadedScan`: its labels, tiles
done, whether it has an analysis, the % axonal area of the whole section and of
the rubrospinal territory, and the regions corrected by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from analysis.results import SavedSection

from .results_io import LoadedScan, pct_axonal_area_text
from .section_render import region_label

__all__ = ["SECTION_COLUMNS", "SectionList", "hand_regions_text"]

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
    "Regions by hand",
)
_TIPS = {
    7: "% axonal area of the whole section",
    8: "% axonal area of the rubrospinal tract's territory (coronal sections)",
    9: "Regions edited, drawn or imported by hand (the others are automatic)",
}


def hand_regions_text(section: SavedSection) -> str:
    """The section's regions that are not automatic, e.g. ``"rubrospinal territory (edited)"``."""
    if section.analysis is None:
        return ""
    rows = [r for r in section.analysis.table if r.kind != "automatic"]
    return ", ".join(f"{region_label(r.region)} ({r.kind})" for r in rows)


class SectionList(QTableWidget):
    """The sections of a scan file, one row each; one row selected at a time."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(SECTION_COLUMNS), parent)
        self.setHorizontalHeaderLabels(list(SECTION_COLUMNS))
        for column, tip in _TIPS.items():
            header_item = self.horizontalHeaderItem(column)
            if header_item is not None:
                header_item.setToolTip(tip)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.verticalHeader().setVisible(False)  # type: ignore[union-attr]
        header = self.horizontalHeader()
        assert header is not None
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self._ids: list[str] = []

    def show_scan(self, scan: LoadedScan) -> None:
        """One row per section of the scan, nothing selected (without a selection signal)."""
        self.blockSignals(True)
        try:
            self._ids = list(scan.sections)
            self.setRowCount(len(self._ids))
            for sid in self._ids:
                self._fill(scan, sid)
            self.clearSelection()
        finally:
            self.blockSignals(False)

    def update_sections(self, scan: LoadedScan, section_ids: Sequence[str]) -> None:
        """Rewrite the rows of these sections from ``scan``."""
        for sid in section_ids:
            if sid in self._ids:
                self._fill(scan, sid)

    def section_ids(self) -> list[str]:
        """The sections listed, in order."""
        return list(self._ids)

    def select_section(self, section_id: str) -> None:
        """Select one section's row."""
        if section_id in self._ids:
            self.selectRow(self._ids.index(section_id))

    def selected_section(self) -> str | None:
        """The selected section, if any."""
        rows = {i.row() for i in self.selectedIndexes()}
        return self._ids[rows.pop()] if len(rows) == 1 and self._ids else None

    def _fill(self, scan: LoadedScan, sid: str) -> None:
        section = scan.sections[sid]
        a = section.attrs
        counts = scan.summary.sections[sid]
        values = (
            sid,
            str(a.get("animal") or ""),
            str(a.get("group") or ""),
            str(a.get("level") or ""),
            str(a.get("orientation") or ""),
            f"{counts.done} / {counts.n_tiles}" + (f" ({counts.failed} failed)" if counts.failed else ""),
            "yes" if section.analysis is not None else "no",
            pct_axonal_area_text(section, "section"),
            pct_axonal_area_text(section, "rubrospinal_territory"),
            hand_regions_text(section),
        )
        row = self._ids.index(sid)
        for j, text in enumerate(values):
            item = QTableWidgetItem(text)
            if j in (7, 8):
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.setItem(row, j, item)
