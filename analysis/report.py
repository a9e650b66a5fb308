"""A study's single self-contained HTML report, and its statistics as CSV.

:func:`write_report` writes one HTML file a scientist can send to a
colleague: the figures embedded as base64 PNG (no external files, scripts,
fonts or links), per level the statistics of every region (group means ±
SEM and n, the normality check, the test chosen and why, its statistic and
p, and every pairwise comparison with its p and effect size), what was left
out of the study, the per-animal data, and a methods section listing every
analysis parameter used and the software versions (of the scans and of the
study).
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import importlib.metadata
import json
import math
import platform
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from analysis.stats import GroupComparison
from analysis.study import TIDY_COLUMNS, HandRegion, Study, StudyProblem, hand_regions

__all__ = [
    "STATS_COLUMNS",
    "hand_regions_html",
    "methods_html",
    "scan_software_versions",
    "study_software_versions",
    "write_report",
    "write_statistics_csv",
]

STATS_COLUMNS: tuple[str, ...] = (
    "level",
    "region",
    "test",
    "statistic",
    "p_value",
    "posthoc",
    "group_a",
    "group_b",
    "n_a",
    "n_b",
    "mean_a",
    "sem_a",
    "mean_b",
    "sem_b",
    "mean_difference",
    "pair_statistic",
    "pair_p_value",
    "effect_size",
    "effect_size_name",
    "significant",
    "reason",
)

_STUDY_PACKAGES = (
    "cordscope",
    "numpy",
    "scipy",
    "scikit-posthocs",
    "pandas",
    "statsmodels",
    "matplotlib",
    "scikit-image",
    "h5py",
)


def study_software_versions() -> dict[str, str]:
    """Versions of the packages the study's statistics and figures ran on."""
    out = {}
    for name in _STUDY_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


def scan_software_versions(paths: Sequence[str | Path]) -> dict[str, list[str]]:
    """Software versions recorded in scan files (package → distinct versions)."""
    seen: dict[str, set[str]] = {}
    for p in paths:
        try:
            with h5py.File(p, "r") as f:
                raw = f.attrs.get("software_json")
        except OSError:
            continue
        if raw is None:
            continue
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        for k, v in json.loads(text).items():
            seen.setdefault(k, set()).add(str(v))
    return {k: sorted(v) for k, v in seen.items()}


def _num(v: float, digits: int = 3) -> str:
    if not math.isfinite(v):
        return "–"
    if v != 0 and abs(v) < 10 ** (-digits):
        return f"{v:.2e}"
    return f"{v:.{digits}f}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _pe(p: float) -> str:
    """``p = 0.012`` or ``p < 0.001``."""
    text = _p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def write_statistics_csv(path: str | Path, comparisons: Mapping[tuple[str, str], GroupComparison]) -> Path:
    """One row per level × region × pair of groups (:data:`STATS_COLUMNS`)."""
    out = Path(path)
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(STATS_COLUMNS)
        for (level, region), comp in comparisons.items():
            groups = {g.group: g for g in comp.groups}
            for pair in comp.pairs or [None]:  # type: ignore[list-item]
                a = groups.get(pair.group_a) if pair else None
                b = groups.get(pair.group_b) if pair else None
                w.writerow(
                    [
                        level,
                        region,
                        comp.test,
                        comp.statistic,
                        comp.p_value,
                        comp.posthoc,
                        pair.group_a if pair else "",
                        pair.group_b if pair else "",
                        a.n if a else "",
                        b.n if b else "",
                        a.mean if a else "",
                        a.sem if a else "",
                        b.mean if b else "",
                        b.sem if b else "",
                        pair.mean_difference if pair else "",
                        pair.statistic if pair else "",
                        pair.p_value if pair else "",
                        pair.effect_size if pair else "",
                        pair.effect_size_name if pair else "",
                        pair.significant if pair else "",
                        comp.reason,
                    ]
                )
    return out


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _comparison_html(region_label: str, comp: GroupComparison) -> str:
    rows = []
    for g in comp.groups:
        normal = (
            f"W = {_num(g.shapiro_w)}, {_pe(g.shapiro_p)}" if math.isfinite(g.shapiro_p) else "not tested"
        )
        rows.append(
            f"<tr><td>{html.escape(g.group)}</td><td>{g.n}</td><td>{_num(g.mean)} ± {_num(g.sem)}</td>"
            f"<td>{normal}</td></tr>"
        )
    left = "".join(
        f"<tr><td>{html.escape(g)}</td><td colspan=3>left out: {html.escape(why)}</td></tr>"
        for g, why in comp.left_out.items()
    )
    parts = [
        f"<h4>{html.escape(region_label)}</h4>",
        "<table><tr><th>group</th><th>n</th><th>mean ± SEM</th><th>Shapiro–Wilk</th></tr>",
        *rows,
        left,
        "</table>",
    ]
    if comp.test:
        stat = "F" if comp.test == "one-way ANOVA" else "H"
        dfs = ""
        if comp.test == "one-way ANOVA":
            n = sum(g.n for g in comp.groups)
            dfs = f"({len(comp.groups) - 1}, {n - len(comp.groups)})"
        else:
            dfs = f"({len(comp.groups) - 1})"
        parts.append(
            f"<p class=test><b>{html.escape(comp.test)}</b>: {stat}{dfs} = {_num(comp.statistic)}, "
            f"{_pe(comp.p_value)}. <span class=why>{html.escape(comp.reason)}.</span></p>"
        )
        prow = [
            f"<tr class={'sig' if p.significant else 'ns'}><td>{html.escape(p.group_a)} vs "
            f"{html.escape(p.group_b)}</td><td>{_num(p.mean_difference)}</td><td>{_num(p.statistic)}</td>"
            f"<td>{_p(p.p_value)}</td><td>{_num(p.effect_size, 2)} ({html.escape(p.effect_size_name)})</td>"
            f"<td>{'yes' if p.significant else 'no'}</td></tr>"
            for p in comp.pairs
        ]
        stat_name = "difference (Tukey)" if comp.posthoc == "Tukey-Kramer" else "z (Dunn)"
        parts += [
            f"<table><tr><th>{html.escape(comp.posthoc)}</th><th>mean difference (b − a)</th>"
            f"<th>{stat_name}</th><th>p</th><th>effect size (b vs a)</th><th>p &lt; {comp.alpha:g}</th></tr>",
            *prow,
            "</table>",
        ]
    else:
        parts.append(f"<p class=test>{html.escape(comp.reason)}.</p>")
    return "\n".join(parts)


def hand_regions_html(regions: Sequence[HandRegion], *, region_label: Any = None) -> str:
    """The report's list of regions corrected by hand (edited, drawn, imported), one row each."""
    label = region_label or (lambda r: r)
    if not regions:
        return (
            "<h2>Regions corrected by hand</h2><p>None: every region of every section is the one CordScope "
            "found automatically.</p>"
        )

    def name(region: str) -> str:
        code = f"<code>{html.escape(region)}</code>"
        shown = str(label(region))
        return code if shown == region else f"{html.escape(shown)} ({code})"

    rows = "".join(
        f"<tr><td>{html.escape(r.animal)}</td><td>{html.escape(r.group)}</td><td>{html.escape(r.level)}</td>"
        f"<td>{html.escape(r.section_id)}</td><td>{name(r.region)}</td><td>{html.escape(r.kind)}</td>"
        f"<td>{html.escape(r.who)}</td><td>{html.escape(r.when_iso)}</td><td>{html.escape(r.source)}</td></tr>"
        for r in regions
    )
    n_sections = len({(r.file, r.section_id) for r in regions})
    return (
        f"<h2>Regions corrected by hand ({len(regions)} in {n_sections} section(s))</h2>"
        "<p>These regions are not the ones CordScope found automatically: <i>edited</i> (an automatic "
        "outline moved by hand), <i>drawn</i> (by hand, or a polygon in the plan), <i>imported</i> (from a "
        "GeoJSON file, e.g. edited in QuPath). Their numbers enter the statistics like any other.</p>"
        "<table><tr><th>animal</th><th>group</th><th>level</th><th>section</th><th>region</th><th>kind</th>"
        f"<th>who</th><th>when</th><th>from</th></tr>{rows}</table>"
    )


def _level_hand_note(regions: Sequence[HandRegion], level: str, label: Any) -> str:
    here = [r for r in regions if r.level == level]
    if not here:
        return ""
    items = ", ".join(
        f"{html.escape(r.animal)} {html.escape(str(label(r.region)))} ({html.escape(r.kind)})" for r in here
    )
    return f"<p class=why>Regions corrected by hand at {html.escape(level)}: {items}.</p>"


def _parameter_values(study: Study) -> dict[str, Counter[str]]:
    """Every analysis parameter with its distinct values and how many sections used each.

    Per-section counts (``n_tiles``, ``n_tiles_analysed``, ...) are results, not parameters.
    """
    values: dict[str, Counter[str]] = {}
    for s in study.sections:
        for k, v in _flatten(s.analysis.parameters):
            if k.split(".")[-1].startswith("n_"):
                continue
            values.setdefault(k, Counter())[json.dumps(v) if not isinstance(v, str) else v] += 1
    return dict(sorted(values.items()))


def _acquisition_sets(study: Study) -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    for s in study.sections:
        px = s.attrs.get("pixel_size_um")
        tile = s.attrs.get("tile_size_um")
        ch = s.attrs.get("channel_names")
        size = "?" if tile is None else " × ".join(f"{float(v):g}" for v in np.ravel(np.asarray(tile)))
        desc = f"pixel size {px} µm, tile {size} µm, channels {ch}"
        counts[desc] += 1
    return counts.most_common()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def methods_html(
    study: Study, comparisons: Mapping[tuple[str, str], GroupComparison], *, alpha: float
) -> str:
    """The methods section: data, averaging, statistics, every analysis parameter, software versions."""
    n_animals = len({s.animal for s in study.sections})
    parts = [
        "<h2>Methods</h2>",
        f"<p>{len(study.sections)} sections of {n_animals} animals from {len(study.files)} scan file(s) were "
        "analysed with CordScope: the camera dark offset was subtracted from each tile, labelled axons were "
        "segmented in the tracer channel (parameters below), and the gray matter, white matter, "
        "rubrospinal territory (lateral-most dorsolateral funiculus contralateral to the injection) and "
        "section halves were found from the "
        "anatomy (DAPI) channel. For each region, % axonal area = 100 × segmented axon area / imaged "
        "tissue area, and the mean tracer intensity is the mean corrected tracer signal over the region. "
        "Sections of the same animal and level were averaged (arithmetic mean of each region's values), "
        "giving one value per animal; the animal is the unit of analysis.</p>",
        f"<p>Groups were compared separately at each level and region. Normality was checked in every "
        f"group with the Shapiro–Wilk test (scipy.stats.shapiro). When every group had p ≥ {alpha:g}, a "
        "one-way ANOVA (scipy.stats.f_oneway) was followed by Tukey–Kramer pairwise comparisons "
        "(scipy.stats.tukey_hsd, valid for unequal group sizes), with Hedges' g (pooled-SD standardised "
        "mean difference, small-sample corrected) as effect size. Otherwise, or when a group had fewer "
        "than three distinct values so normality could not be tested, a Kruskal–Wallis test "
        "(scipy.stats.kruskal) was followed by Dunn's test with Holm's correction "
        "(scikit_posthocs.posthoc_dunn, p_adjust='holm'), with Cliff's delta (equal to the rank-biserial "
        f"correlation) as effect size. Groups with fewer than two animals at a level were left out. "
        f"Pairs were called different at p &lt; {alpha:g}; bars show mean ± SEM with each animal as a dot. "
        "Average heatmaps: each coronal section's % axonal area map (square bins) was resampled onto a "
        "common 20 µm grid centred on the central canal, rotated by the principal axis of its tissue mask "
        "(left–right horizontal, dorsal up) and mirrored so that the side contralateral to the injection "
        "lies on the right; maps were averaged per animal, then over the animals of a group, where at "
        "least half of the sections have tissue.</p>",
    ]
    tests = Counter(c.test or "no test" for c in comparisons.values())
    parts.append(
        "<p>Tests used: "
        + ", ".join(f"{html.escape(t)} in {n} level × region comparison(s)" for t, n in tests.items())
        + ".</p>"
    )
    parts.append("<h3>Acquisition</h3><ul>")
    for desc, n in _acquisition_sets(study):
        parts.append(f"<li>{html.escape(desc)} ({n} section(s))</li>")
    parts.append("</ul><h3>Analysis parameters</h3>")
    parts.append("<table><tr><th>parameter</th><th>value (sections, when not all)</th></tr>")
    n_sections = len(study.sections)
    for k, counts in _parameter_values(study).items():
        shown = ", ".join(
            v if len(counts) == 1 and n == n_sections else f"{v} ({n})" for v, n in counts.most_common()
        )
        parts.append(f"<tr><td><code>{html.escape(k)}</code></td><td>{html.escape(shown)}</td></tr>")
    parts.append("</table>")
    parts.append("<h3>Software</h3><table><tr><th>package</th><th>study</th><th>scans</th></tr>")
    scans = scan_software_versions(study.files)
    now = study_software_versions()
    for name in sorted(set(now) | set(scans)):
        parts.append(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(now.get(name, '–'))}</td>"
            f"<td>{html.escape(', '.join(scans.get(name, ['–'])))}</td></tr>"
        )
    parts.append("</table>")
    return "\n".join(parts)


_CSS = """
body{font-family:Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f2f2f2}
tr.sig td{background:#fff4e5}figure{margin:1em 0}img{max-width:100%}
.test{font-size:.92em}.why{color:#555}.problems li{color:#8a3b00}code{font-size:.95em}
.data td{font-size:.85em}
"""


def write_report(
    path: str | Path,
    study: Study,
    comparisons: Mapping[tuple[str, str], GroupComparison],
    *,
    figures: Mapping[str, Sequence[Path]],
    problems: Sequence[StudyProblem] = (),
    alpha: float = 0.05,
    title: str = "CordScope study report",
    region_label: Any = None,
) -> Path:
    """Write the study's self-contained HTML report.

    Parameters
    ----------
    path : the .html file to write
    study : Study
    comparisons : mapping of (level, region) → GroupComparison
    figures : mapping of level → PNG files to embed for that level (in order)
    problems : everything left out (files, sections, groups), listed at the top
    alpha : significance level used
    title : the report's heading
    region_label : callable, optional
        Region name → label (default: the name).
    """
    label = region_label or (lambda r: r)
    by_hand = hand_regions(study)
    groups = study.groups
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    animals = {g: len({r.animal for r in study.rows if r.group == g}) for g in groups}
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(study.files)} scan file(s), {len(study.sections)} sections; "
        + ", ".join(f"{html.escape(g)}: {n} animal(s)" for g, n in animals.items())
        + f"; levels {html.escape(', '.join(study.levels))}. Created {created}.</p>",
    ]
    if problems:
        body.append(f"<h2>Left out ({len(problems)})</h2><ul class=problems>")
        body += [f"<li>{html.escape(str(p))}</li>" for p in problems]
        body.append("</ul>")
    for level in study.levels:
        body.append(f"<h2>{html.escape(level)}</h2>")
        body.append(_level_hand_note(by_hand, level, label))
        for png in figures.get(level, ()):
            body.append(_img(Path(png), f"{level}: {Path(png).stem}"))
        for region in study.regions(level):
            comp = comparisons.get((level, region))
            if comp is not None:
                body.append(_comparison_html(str(label(region)), comp))
    body.append(hand_regions_html(by_hand, region_label=label))
    body.append("<h2>Data (one row per animal × level × region)</h2>")
    body.append("<details><summary>show the table</summary><table class=data><tr>")
    body += [f"<th>{html.escape(c)}</th>" for c in TIDY_COLUMNS]
    body.append("</tr>")
    for r in study.rows:
        cells = []
        for c in TIDY_COLUMNS:
            v = getattr(r, c)
            text = _num(v, 4) if isinstance(v, float) else ("; ".join(v) if isinstance(v, tuple) else str(v))
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    body.append("</table></details>")
    body.append(methods_html(study, comparisons, alpha=alpha))
    doc = (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    out = Path(path)
    out.write_text(doc, encoding="utf-8")
    return out
