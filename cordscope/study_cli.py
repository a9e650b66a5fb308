"""``cordscope study``: from scan files to the tidy table, statistics, figures and HTML report."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from analysis.report import write_report, write_statistics_csv
from analysis.stats import ALPHA, GroupComparison
from analysis.study import MAIN_REGIONS, Study, StudyProblem, load_study, study_comparisons, write_tidy_csv
from analysis.study_figures import group_bar_figure, heatmap_figure, region_label, save_figure

__all__ = ["StudyOutputs", "print_study_summary", "run_study"]

logger = logging.getLogger(__name__)

TIDY_CSV = "study-animals.csv"
STATS_CSV = "study-statistics.csv"
REPORT_HTML = "study-report.html"


@dataclasses.dataclass(frozen=True)
class StudyOutputs:
    """Files written by :func:`run_study` and what they hold."""

    study: Study
    comparisons: dict[tuple[str, str], GroupComparison]
    problems: tuple[StudyProblem, ...]
    tidy_csv: Path
    statistics_csv: Path
    report_html: Path
    figures: dict[str, list[Path]]


def run_study(scan_files: Sequence[Path], out_dir: Path, *, alpha: float = ALPHA) -> StudyOutputs:
    """Build the study of ``scan_files`` and write its table, statistics, figures and report to ``out_dir``.

    Raises
    ------
    analysis.study.StudyError
        When no section of any file can be used.
    """
    study = load_study(scan_files)
    out_dir.mkdir(parents=True, exist_ok=True)
    comparisons, group_problems = study_comparisons(study, alpha=alpha)
    problems = [*study.problems, *group_problems]
    tidy = write_tidy_csv(out_dir / TIDY_CSV, study.rows)
    stats_csv = write_statistics_csv(out_dir / STATS_CSV, comparisons)
    figures: dict[str, list[Path]] = {}
    for level in study.levels:
        pngs: list[Path] = []
        # a level where every group was left out (e.g. one animal) has no bars to draw
        regions = [r for r in MAIN_REGIONS if (level, r) in comparisons and comparisons[(level, r)].groups]
        if regions:
            fig = group_bar_figure(study, level, comparisons, regions=regions)
            pngs.append(save_figure(fig, out_dir / f"study-{level}-bars")[0])
        coronal = [s for s in study.sections if s.level == level and s.orientation == "coronal"]
        # the heatmaps mirror each section by its injection side: without it there is no common frame
        if any(s.injection_side in ("left", "right") for s in coronal):
            fig = heatmap_figure(study, level)
            pngs.append(save_figure(fig, out_dir / f"study-{level}-heatmaps")[0])
        elif coronal:
            problems.append(
                StudyProblem(
                    ", ".join(sorted({s.file for s in coronal})),
                    ", ".join(s.section_id for s in coronal),
                    f"level {level}: no heatmap: no coronal section has a known injection side "
                    "(the plan's section metadata)",
                )
            )
        figures[level] = pngs
    report = write_report(
        out_dir / REPORT_HTML,
        study,
        comparisons,
        figures=figures,
        problems=problems,
        alpha=alpha,
        region_label=region_label,
    )
    return StudyOutputs(study, comparisons, tuple(problems), tidy, stats_csv, report, figures)


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def print_study_summary(console: Console, out: StudyOutputs) -> None:
    """Print the main comparisons (main regions), what was left out and where the files are."""
    study = out.study
    table = Table("level", "region", *study.groups, "test", "p", "pairs p < α", title="% axonal area")
    for (level, region), comp in out.comparisons.items():
        if region not in MAIN_REGIONS:
            continue
        by = {g.group: g for g in comp.groups}
        cells = [
            f"{by[g].mean:.3g} ± {by[g].sem:.2g} (n={by[g].n})" if g in by else "—" for g in study.groups
        ]
        sig = ", ".join(f"{p.group_a}–{p.group_b} ({_p(p.p_value)})" for p in comp.pairs if p.significant)
        table.add_row(level, region_label(region), *cells, comp.test or "—", _p(comp.p_value), sig or "none")
    console.print(table)
    for p in out.problems:
        console.print(f"[yellow]left out: {p}", highlight=False)
    console.print(
        f"wrote {out.tidy_csv} (one row per animal × level × region), {out.statistics_csv}, "
        f"{sum(len(v) for v in out.figures.values())} figures (PNG + SVG) and the report {out.report_html}"
    )
