"""A study from its scan files: every section's region table, averaged per animal and level.

:func:`load_study` reads the saved analysis of every section of every scan
file (:func:`analysis.results.load_scan_results`, nothing is recomputed),
keeps the sections labelled with animal, group and level, and averages the
sections of the same animal and level region by region (each column is the
mean over those sections) into one tidy row per animal × level × region
(:class:`AnimalRow`, written by :func:`write_tidy_csv`). What it cannot use
(an unreadable file, a file or section without analysis, a section without
animal, group or level, an animal labelled with two groups) is left out and
listed in :attr:`Study.problems`, each naming the file and section.

:func:`study_comparisons` then compares the groups per level × region with
:func:`analysis.stats.compare_groups`, noting groups with fewer than two
animals as problems too.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from acquisition.errors import CordScopeError
from analysis.maps import SavedAnalysis
from analysis.results import load_scan_results
from analysis.stats import ALPHA, GroupComparison, compare_groups

__all__ = [
    "GROUP_ORDER",
    "LEVEL_ORDER",
    "MAIN_REGIONS",
    "TIDY_COLUMNS",
    "AnimalRow",
    "HandRegion",
    "SectionRecord",
    "Study",
    "StudyError",
    "StudyProblem",
    "hand_regions",
    "load_study",
    "study_comparisons",
    "write_tidy_csv",
]

GROUP_ORDER: tuple[str, ...] = ("intact", "vehicle", "treated")
"""Usual order of the groups in tables and figures; other groups follow in order of appearance."""

LEVEL_ORDER: tuple[str, ...] = (
    *(f"C{i}" for i in range(1, 9)),
    *(f"Th{i}" for i in range(1, 14)),
    *(f"L{i}" for i in range(1, 7)),
    "S1",
    "lesion",
)
"""Rostral to caudal; other levels follow in order of appearance."""

MAIN_REGIONS: tuple[str, ...] = ("section", "white_matter", "gray_matter", "rubrospinal_territory")
"""The regions a tract-tracing study reports first (figures show these)."""

TIDY_COLUMNS: tuple[str, ...] = (
    "animal",
    "group",
    "level",
    "region",
    "n_sections",
    "area_um2",
    "axon_area_um2",
    "pct_axonal_area",
    "mean_tracer_intensity",
    "imaged_fraction",
    "sections",
)

_REQUIRED_LABELS = ("animal", "group", "level")


class StudyError(CordScopeError):
    """A study cannot be built at all (e.g. no usable section in any file)."""


@dataclasses.dataclass(frozen=True)
class StudyProblem:
    """Something left out of the study, and why.

    Attributes
    ----------
    file : str
        The scan file's path.
    section : str or None
        The section concerned (None: the whole file, or a group at a level).
    message : str
        One line a user can act on.
    """

    file: str
    section: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.section is None else f"{self.file}: section {self.section}"
        return f"{where}: {self.message}" if where else self.message


@dataclasses.dataclass(frozen=True)
class SectionRecord:
    """One usable section of the study with its labels and saved analysis."""

    file: str
    section_id: str
    animal: str
    group: str
    level: str
    orientation: str
    injection_side: str | None
    analysis: SavedAnalysis
    attrs: Mapping[str, object] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AnimalRow:
    """One animal × level × region: the mean over the animal's sections at that level.

    Attributes
    ----------
    animal, group, level, region : str
    n_sections : int
        Sections averaged (those whose table has the region).
    area_um2, axon_area_um2, pct_axonal_area, mean_tracer_intensity, imaged_fraction : float
        Means over those sections of the columns of :class:`analysis.maps.RegionRow`
        (NaN values, e.g. a region not imaged, are left out of the mean).
    sections : tuple of str
        ``file:section`` of the sections averaged.
    """

    animal: str
    group: str
    level: str
    region: str
    n_sections: int
    area_um2: float
    axon_area_um2: float
    pct_axonal_area: float
    mean_tracer_intensity: float
    imaged_fraction: float
    sections: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Study:
    """Sections, per-animal rows and what was left out.

    Attributes
    ----------
    files : tuple of str
    sections : tuple of SectionRecord
    rows : tuple of AnimalRow
    problems : tuple of StudyProblem
    """

    files: tuple[str, ...]
    sections: tuple[SectionRecord, ...]
    rows: tuple[AnimalRow, ...]
    problems: tuple[StudyProblem, ...]

    @property
    def groups(self) -> tuple[str, ...]:
        """Groups present, in :data:`GROUP_ORDER` first."""
        return ordered({r.group for r in self.rows}, GROUP_ORDER)

    @property
    def levels(self) -> tuple[str, ...]:
        """Levels present, rostral to caudal."""
        return ordered({r.level for r in self.rows}, LEVEL_ORDER)

    def regions(self, level: str | None = None) -> tuple[str, ...]:
        """Regions present (at ``level``), main regions first, rostro-caudal bins by distance."""
        names = {r.region for r in self.rows if level is None or r.level == level}
        return tuple(sorted(names, key=_region_key))

    def values(self, level: str, region: str, column: str = "pct_axonal_area") -> dict[str, list[float]]:
        """Per-animal values of one column at one level and region, by group (study group order)."""
        out: dict[str, list[float]] = {g: [] for g in self.groups}
        for r in self.rows:
            if r.level == level and r.region == region:
                out[r.group].append(float(getattr(r, column)))
        return {g: v for g, v in out.items() if v}

    def animals(self, level: str, region: str) -> dict[str, list[str]]:
        """Animal names in the order of :meth:`values`."""
        out: dict[str, list[str]] = {g: [] for g in self.groups}
        for r in self.rows:
            if r.level == level and r.region == region:
                out[r.group].append(r.animal)
        return {g: v for g, v in out.items() if v}


@dataclasses.dataclass(frozen=True)
class HandRegion:
    """A region of a study's section that CordScope did not find by itself: edited, drawn or imported.

    Attributes
    ----------
    file, section_id, animal, group, level, region : str
    kind : str
        ``edited``, ``drawn`` or ``imported`` (:class:`analysis.maps.RegionRow` ``kind``).
    who, when_iso, source : str
        Who changed it, when, and from where (``gui``, ``plan``, a GeoJSON file name), as recorded.
    """

    file: str
    section_id: str
    animal: str
    group: str
    level: str
    region: str
    kind: str
    who: str = ""
    when_iso: str = ""
    source: str = ""


def hand_regions(study: Study) -> list[HandRegion]:
    """Every region of the study's sections whose kind is not ``automatic``, in section order.

    The kind comes from the region table (``RegionRow.kind``), who/when/source from the
    region's record when the file has one.
    """
    out = []
    for s in study.sections:
        for row in s.analysis.table:
            if row.kind == "automatic":
                continue
            rec = s.analysis.regions.get(row.region)
            out.append(
                HandRegion(
                    file=s.file,
                    section_id=s.section_id,
                    animal=s.animal,
                    group=s.group,
                    level=s.level,
                    region=row.region,
                    kind=row.kind,
                    who=rec.who if rec is not None else "",
                    when_iso=rec.when_iso if rec is not None else "",
                    source=rec.source if rec is not None else "",
                )
            )
    return out


def ordered(names: Iterable[str], preferred: Sequence[str]) -> tuple[str, ...]:
    """``names`` with those in ``preferred`` first (in its order), the rest sorted."""
    names = set(names)
    first = [n for n in preferred if n in names]
    return (*first, *sorted(names - set(first)))


def _region_key(name: str) -> tuple[int, float, str]:
    if name in MAIN_REGIONS:
        return (0, float(MAIN_REGIONS.index(name)), name)
    start = name[3:].split("_")[0] if name.startswith("rc_") else ""
    if start.lstrip("-").isdigit():  # rostro-caudal bins in order of their start (µm)
        return (2, float(start), name)
    return (1, 0.0, name)


def _label(attrs: Mapping[str, object], key: str) -> str:
    value = attrs.get(key)
    return "" if value is None else str(value).strip()


def collect_sections(paths: Sequence[str | Path]) -> tuple[list[SectionRecord], list[StudyProblem]]:
    """Read every section of every file; keep the labelled, analysed ones.

    Returns
    -------
    records : list of SectionRecord
    problems : list of StudyProblem
        One per file or section left out, naming it and saying why.
    """
    records: list[SectionRecord] = []
    problems: list[StudyProblem] = []
    for p in paths:
        path = str(p)
        try:
            saved = load_scan_results(path)
        except (CordScopeError, OSError, KeyError, ValueError) as e:
            problems.append(StudyProblem(path, None, f"not a readable scan file ({e}); left out"))
            continue
        if not saved:
            problems.append(StudyProblem(path, None, "has no sections; left out"))
            continue
        if all(s.analysis is None for s in saved.values()):
            problems.append(
                StudyProblem(path, None, f"has no analysis; run `cordscope analyze {path}` first; left out")
            )
            continue
        for sid, sec in saved.items():
            missing = [k for k in _REQUIRED_LABELS if not _label(sec.attrs, k)]
            if missing:
                problems.append(
                    StudyProblem(path, sid, f"has no {' or '.join(missing)} (label it in the plan); left out")
                )
                continue
            if sec.analysis is None:
                problems.append(
                    StudyProblem(path, sid, "has no analysis (not analysed or no tissue imaged); left out")
                )
                continue
            side = _label(sec.attrs, "injection_side") or None
            records.append(
                SectionRecord(
                    file=path,
                    section_id=sid,
                    animal=_label(sec.attrs, "animal"),
                    group=_label(sec.attrs, "group"),
                    level=_label(sec.attrs, "level"),
                    orientation=_label(sec.attrs, "orientation") or "coronal",
                    injection_side=side,
                    analysis=sec.analysis,
                    attrs=dict(sec.attrs),
                )
            )
    return records, problems


def _consistent_groups(records: list[SectionRecord]) -> tuple[list[SectionRecord], list[StudyProblem]]:
    """Drop the sections of an animal labelled with more than one group."""
    groups: dict[str, set[str]] = defaultdict(set)
    for r in records:
        groups[r.animal].add(r.group)
    bad = {a for a, g in groups.items() if len(g) > 1}
    problems = [
        StudyProblem(
            r.file,
            r.section_id,
            f"animal {r.animal} is labelled with groups {', '.join(sorted(groups[r.animal]))}; "
            "its sections are left out",
        )
        for r in records
        if r.animal in bad
    ]
    return [r for r in records if r.animal not in bad], problems


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def animal_rows(records: Sequence[SectionRecord]) -> list[AnimalRow]:
    """Average the sections of each animal × level, region by region.

    Returns
    -------
    list of AnimalRow
        Sorted by level (rostral first), group, animal and region.
    """
    by_key: dict[tuple[str, str, str, str], list[tuple[SectionRecord, object]]] = defaultdict(list)
    for rec in records:
        for row in rec.analysis.table:
            by_key[(rec.animal, rec.group, rec.level, row.region)].append((rec, row))
    rows = []
    for (animal, group, level, region), items in by_key.items():
        tab = [row for _, row in items]
        rows.append(
            AnimalRow(
                animal=animal,
                group=group,
                level=level,
                region=region,
                n_sections=len(items),
                area_um2=_mean([r.area_um2 for r in tab]),  # type: ignore[attr-defined]
                axon_area_um2=_mean([r.axon_area_um2 for r in tab]),  # type: ignore[attr-defined]
                pct_axonal_area=_mean([r.pct_axonal_area for r in tab]),  # type: ignore[attr-defined]
                mean_tracer_intensity=_mean([r.mean_tracer_intensity for r in tab]),  # type: ignore[attr-defined]
                imaged_fraction=_mean([r.imaged_fraction for r in tab]),  # type: ignore[attr-defined]
                sections=tuple(f"{Path(rec.file).name}:{rec.section_id}" for rec, _ in items),
            )
        )
    levels = ordered({r.level for r in rows}, LEVEL_ORDER)
    groups = ordered({r.group for r in rows}, GROUP_ORDER)
    rows.sort(key=lambda r: (levels.index(r.level), groups.index(r.group), r.animal, _region_key(r.region)))
    return rows


def load_study(paths: Sequence[str | Path]) -> Study:
    """Collect the saved analysis of scan files into a study.

    Parameters
    ----------
    paths : scan files (cordscope-scan HDF5, analysed live or by ``cordscope analyze``)

    Raises
    ------
    StudyError
        When no section of any file can be used (the message lists why).
    """
    records, problems = collect_sections(paths)
    records, label_problems = _consistent_groups(records)
    problems += label_problems
    if not records:
        detail = "; ".join(str(p) for p in problems[:5]) or "no files given"
        raise StudyError(f"no usable section in {len(paths)} file(s): {detail}")
    return Study(
        files=tuple(str(p) for p in paths),
        sections=tuple(records),
        rows=tuple(animal_rows(records)),
        problems=tuple(problems),
    )


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(v)
    if isinstance(v, tuple):
        return ";".join(str(x) for x in v)
    return str(v)


def write_tidy_csv(path: str | Path, rows: Sequence[AnimalRow]) -> Path:
    """Write one row per animal × level × region (:data:`TIDY_COLUMNS`; NaN as an empty field)."""
    out = Path(path)
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(TIDY_COLUMNS)
        for r in rows:
            w.writerow([_fmt(getattr(r, c)) for c in TIDY_COLUMNS])
    return out


def study_comparisons(
    study: Study,
    *,
    column: str = "pct_axonal_area",
    regions: Sequence[str] | None = None,
    alpha: float = ALPHA,
) -> tuple[dict[tuple[str, str], GroupComparison], list[StudyProblem]]:
    """Compare the groups at every level × region.

    Parameters
    ----------
    study : Study
    column : str
        The per-animal value compared (a numeric :class:`AnimalRow` field).
    regions : sequence of str, optional
        Regions to compare (default: every region of each level).
    alpha : float

    Returns
    -------
    comparisons : dict of (level, region) → GroupComparison
    problems : list of StudyProblem
        One per level and group left out for having fewer than two animals.
    """
    out: dict[tuple[str, str], GroupComparison] = {}
    problems: list[StudyProblem] = []
    for level in study.levels:
        noted: set[str] = set()
        for region in regions or study.regions(level):
            values = study.values(level, region, column)
            if not values:
                continue
            animals = study.animals(level, region)
            comp = compare_groups(values, alpha=alpha)
            out[(level, region)] = comp
            for group, why in comp.left_out.items():
                if group in noted:
                    continue
                noted.add(group)
                names = ", ".join(animals.get(group, [])) or "none"
                secs = [
                    s
                    for s in study.sections
                    if s.group == group and s.level == level and s.animal in animals.get(group, [])
                ]
                problems.append(
                    StudyProblem(
                        ", ".join(sorted({s.file for s in secs})),
                        ", ".join(s.section_id for s in secs) or None,
                        f"level {level}: group {group} has {why} ({names}); left out of the comparisons "
                        f"at {level}",
                    )
                )
    return out, problems
