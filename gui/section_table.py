"""The Slide tab's sections: one model (:class:`SectionTableModel`) of :class:`Section` rows.

The model is the single source of truth of the Slide tab: the table is a view
of it, and so are the outlines over the overview (:mod:`gui.slide_scene`).
Editing a cell or dragging a vertex changes the model; both views follow its
signals.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PyQt6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QPointF,
    Qt,
    pyqtSignal,
)
from PyQt6.QtWidgets import QComboBox, QStyledItemDelegate, QStyleOptionViewItem, QWidget

from analysis.sections import FoundSection

from .outline_items import qpolygon

__all__ = [
    "COLUMNS",
    "ORIENTATIONS",
    "SIDES",
    "SOURCES",
    "ChoiceDelegate",
    "Section",
    "SectionTableModel",
    "column_index",
    "guess_orientation",
    "merge_found_sections",
]

_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
ORIENTATIONS = ("coronal", "horizontal")
SIDES = ("", "left", "right")  # "" = unknown (None in the plan)

#: Where a section's outline came from; "found" ones are replaced by "Find sections".
SOURCES = ("found", "drawn", "edited", "plan")


@dataclass
class Section:
    """One section: outline (stage µm) and what it is; the fields of ``SectionPlan`` the GUI edits."""

    id: str
    polygon_um: list[tuple[float, float]]
    animal: str = ""
    group: str = ""
    level: str = ""
    orientation: str = "coronal"
    injection_side: str | None = None
    source: str = "drawn"
    #: other SectionPlan fields given to ``set_sections`` (kept as they were)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def area_um2(self) -> float:
        """Shoelace area of the outline (µm²)."""
        if len(self.polygon_um) < 3:
            return 0.0
        xy = np.asarray(self.polygon_um, dtype=np.float64)
        x, y = xy[:, 0], xy[:, 1]
        return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)

    @property
    def centroid_um(self) -> tuple[float, float]:
        """Mean of the vertices (µm): inside any outline find_sections makes, enough for matching."""
        xy = np.asarray(self.polygon_um, dtype=np.float64)
        return (float(xy[:, 0].mean()), float(xy[:, 1].mean()))

    def contains(self, x: float, y: float) -> bool:
        """Whether stage point (x, y) lies inside the outline."""
        return qpolygon(self.polygon_um).containsPoint(QPointF(x, y), Qt.FillRule.OddEvenFill)

    def to_plan_dict(self) -> dict[str, Any]:
        """A dict valid for ``acquisition.plan.SectionPlan``."""
        out: dict[str, Any] = {
            "id": self.id,
            "polygon_um": [[round(float(x), 1), round(float(y), 1)] for x, y in self.polygon_um],
            "animal": self.animal,
            "group": self.group,
            "level": self.level,
            "orientation": self.orientation,
            "injection_side": self.injection_side,
        }
        out.update(self.extra)
        return out


#: Table columns: (header, Section attribute or None for a computed one)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("ID", "id"),
    ("Animal", "animal"),
    ("Group", "group"),
    ("Level", "level"),
    ("Orientation", "orientation"),
    ("Injection side", "injection_side"),
    ("Area (mm²)", "area"),
    ("Outline", "source"),
)
_COL = {attr: i for i, (_, attr) in enumerate(COLUMNS)}
_EDITABLE = {"id", "animal", "group", "level", "orientation", "injection_side"}


class SectionTableModel(QAbstractTableModel):
    """The sections of the slide, one row each; the single source of truth of the Slide tab.

    Signals
    -------
    polygon_changed(int)
        The outline of a row changed (row number).
    problem(str)
        An edit was refused (e.g. a duplicate id); the text says why.
    """

    polygon_changed = pyqtSignal(int)
    problem = pyqtSignal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._rows: list[Section] = []

    # ---- Qt model API

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, D102
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, D102
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(  # noqa: D102
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section][0]
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Vertical:
            return str(section + 1)
        return None

    def flags(self, index: QModelIndex | QPersistentModelIndex) -> Qt.ItemFlag:  # noqa: D102
        base = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.isValid() and COLUMNS[index.column()][1] in _EDITABLE:
            base |= Qt.ItemFlag.ItemIsEditable
        return base

    def data(  # noqa: D102
        self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if not index.isValid():
            return None
        s = self._rows[index.row()]
        attr = COLUMNS[index.column()][1]
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            if attr == "area":
                return f"{s.area_um2 / 1e6:.2f}"
            if attr == "injection_side":
                return s.injection_side or ""
            return getattr(s, attr)
        if role == Qt.ItemDataRole.ToolTipRole and attr == "source":
            return {
                "found": "found automatically; replaced by the next “Find sections”",
                "drawn": "drawn by hand",
                "edited": "found automatically, then edited by hand",
                "plan": "from a plan",
            }.get(s.source)
        return None

    def setData(  # noqa: D102
        self, index: QModelIndex | QPersistentModelIndex, value: Any, role: int = Qt.ItemDataRole.EditRole
    ) -> bool:
        if not index.isValid() or role != Qt.ItemDataRole.EditRole:
            return False
        row, attr = index.row(), COLUMNS[index.column()][1]
        if attr not in _EDITABLE:
            return False
        s = self._rows[row]
        text = "" if value is None else str(value).strip()
        if attr == "id":
            if not _ID_PATTERN.match(text) or len(text) > 64:
                self.problem.emit(f"section id {text!r}: use letters, digits, '_', '.', '-' (at most 64)")
                return False
            if any(o.id == text for i, o in enumerate(self._rows) if i != row):
                self.problem.emit(f"section id {text!r} is already used")
                return False
            s.id = text
        elif attr == "orientation":
            if text not in ORIENTATIONS:
                self.problem.emit(f"orientation must be one of {', '.join(ORIENTATIONS)}, got {text!r}")
                return False
            s.orientation = text
            if text != "horizontal":
                s.extra.pop("lesion_epicenter_um", None)  # the plan allows it on horizontal sections only
        elif attr == "injection_side":
            if text not in SIDES:
                self.problem.emit(f"injection side must be left, right or empty, got {text!r}")
                return False
            s.injection_side = text or None
        else:
            setattr(s, attr, text)
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole])
        return True

    # ---- sections API

    def sections(self) -> list[Section]:
        """The sections in table order (the objects themselves; do not mutate)."""
        return list(self._rows)

    def section(self, row: int) -> Section:
        """The section of one row."""
        return self._rows[row]

    def set_sections(self, sections: Sequence[Section]) -> None:
        """Replace every row."""
        self.beginResetModel()
        self._rows = list(sections)
        self.endResetModel()

    def add(self, section: Section) -> int:
        """Append a section (its id must be unused); return its row."""
        if any(o.id == section.id for o in self._rows):
            raise ValueError(f"section id {section.id!r} is already used")
        row = len(self._rows)
        self.beginInsertRows(QModelIndex(), row, row)
        self._rows.append(section)
        self.endInsertRows()
        return row

    def remove_rows(self, rows: Sequence[int]) -> None:
        """Delete some rows."""
        for row in sorted(set(rows), reverse=True):
            if 0 <= row < len(self._rows):
                self.beginRemoveRows(QModelIndex(), row, row)
                del self._rows[row]
                self.endRemoveRows()

    def set_polygon(self, row: int, polygon_um: Sequence[Sequence[float]], *, edited: bool = True) -> None:
        """Replace a row's outline (a "found" one becomes "edited" when ``edited``)."""
        s = self._rows[row]
        s.polygon_um = [(float(x), float(y)) for x, y in polygon_um]
        if edited and s.source == "found":
            s.source = "edited"
        left, right = self.index(row, _COL["area"]), self.index(row, _COL["source"])
        self.dataChanged.emit(left, right, [Qt.ItemDataRole.DisplayRole])
        self.polygon_changed.emit(row)

    def row_of(self, section_id: str) -> int:
        """Row of a section id (-1 if absent)."""
        return next((i for i, s in enumerate(self._rows) if s.id == section_id), -1)

    def next_id(self, prefix: str = "S") -> str:
        """An unused id ``S01``, ``S02``… after the highest one in use."""
        used = {s.id for s in self._rows}
        numbers = [int(m.group(1)) for s in used if (m := re.fullmatch(rf"{prefix}(\d+)", s))]
        n = max(numbers, default=0) + 1
        while f"{prefix}{n:02d}" in used:
            n += 1
        return f"{prefix}{n:02d}"


class ChoiceDelegate(QStyledItemDelegate):
    """A combo box editor for a column with fixed choices."""

    def __init__(self, choices: Sequence[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._choices = list(choices)

    def createEditor(  # noqa: D102
        self, parent: QWidget | None, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> QWidget:
        combo = QComboBox(parent)
        combo.addItems([c or "(unknown)" for c in self._choices])
        # commit as soon as a choice is made, as a spreadsheet does
        combo.activated.connect(lambda _i: self.commitData.emit(combo))
        return combo

    def setEditorData(self, editor: QWidget | None, index: QModelIndex | QPersistentModelIndex) -> None:  # noqa: D102
        if isinstance(editor, QComboBox):
            value = index.data(Qt.ItemDataRole.EditRole) or ""
            editor.setCurrentIndex(max(0, self._choices.index(value) if value in self._choices else 0))

    def setModelData(  # noqa: D102
        self,
        editor: QWidget | None,
        model: Any,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        if isinstance(editor, QComboBox) and model is not None:
            model.setData(index, self._choices[editor.currentIndex()], Qt.ItemDataRole.EditRole)


def column_index(attr: str) -> int:
    """The table column of a :class:`Section` attribute (``"animal"``, ``"orientation"``, ...)."""
    return _COL[attr]


#: A found section this many times longer than wide is taken for a horizontal one.
HORIZONTAL_ASPECT = 2.5


def guess_orientation(bbox_um: Sequence[float]) -> str:
    """Coronal sections are about as wide as high; horizontal ones run several mm along the cord."""
    x0, y0, x1, y1 = (float(v) for v in bbox_um)
    w, h = x1 - x0, y1 - y0
    return "horizontal" if max(w, h) >= HORIZONTAL_ASPECT * max(min(w, h), 1e-9) else "coronal"


def _free_id(index: int, used: set[str], *, width: int) -> str:
    n = index
    while f"S{n:0{width}d}" in used:
        n += 1
    return f"S{n:0{width}d}"


def merge_found_sections(old: Sequence[Section], found: Sequence[FoundSection]) -> tuple[list[Section], int]:
    """The sections after "Find sections": outlines found before are replaced, the user's kept.

    A section found again keeps its id and what the user typed about it; one
    the user outlined by hand (drawn, edited, from a plan) wins over a found
    outline of the same section.

    Returns
    -------
    sections : list of Section
        The kept sections, then the found ones.
    skipped : int
        Found outlines left out because the user's own outline covers them.
    """
    kept = [s for s in old if s.source != "found"]
    previous = [s for s in old if s.source == "found"]
    used = {s.id for s in kept}
    new: list[Section] = []
    skipped = 0
    for f in found:
        polygon = [(float(x), float(y)) for x, y in f.polygon_um]
        candidate = Section(id="", polygon_um=polygon, source="found")
        cx, cy = candidate.centroid_um
        if any(s.contains(cx, cy) or candidate.contains(*s.centroid_um) for s in kept):
            skipped += 1  # the user's own outline of this section wins
            continue
        match = next((s for s in previous if candidate.contains(*s.centroid_um) and s.id not in used), None)
        if match is not None:
            section = replace(match, polygon_um=polygon, extra=dict(match.extra))
        else:
            section = replace(
                candidate,
                id=_free_id(f.index, used, width=max(2, len(str(len(found))))),
                orientation=guess_orientation(f.bbox_um),
            )
        used.add(section.id)
        new.append(section)
    return kept + new, skipped
