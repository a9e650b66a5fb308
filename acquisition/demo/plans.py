"""Plans for the demo slide (the virtual slide's sections, with their truth labels)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from shapely import Polygon

from ..hardware import DEMO_CONFIG
from ..plan import (
    ScanPlan,
    plan_from_dict,
)
from ..plan.model import Vertex

# ======================================================================= demo


def _section_polygon(outline: Any, margin_um: float, max_vertices: int = 64) -> list[Vertex]:
    """Return the outline's convex hull, simplified, grown by ``margin_um`` (≤ max_vertices)."""
    hull = Polygon(np.asarray(outline, dtype=np.float64)).convex_hull
    tolerance = max(margin_um / 5.0, 1.0)
    while True:
        # simplifying cuts inward by at most `tolerance`; the buffer restores the margin
        shape = hull.simplify(tolerance).buffer(margin_um + tolerance, quad_segs=2, join_style="round")
        coords = list(shape.exterior.coords)[:-1]
        if len(coords) <= max_vertices:
            return [(round(float(x), 1), round(float(y), 1)) for x, y in coords]
        tolerance *= 2.0


def demo_plan(
    *,
    output: Path,
    objective: str = "10x",
    name: str = "demo-slide",
    hardware_config: Path | None = None,
    overlap_pct: float = 10.0,
    anatomy_exposure_ms: float = 20.0,
    tracer_exposure_ms: float = 50.0,
    margin_um: float = 50.0,
    slide: Any = None,
    section_ids: Sequence[str] | None = None,
    focus: Mapping[str, Any] | None = None,
    analysis: Mapping[str, Any] | None = None,
) -> ScanPlan:
    """Build the plan that scans every section of the demo slide.

    Parameters
    ----------
    output : Path
        Scan file to write.
    objective : str
        Objective preset of the demo config ("4x", "10x", "20x").
    name, hardware_config, overlap_pct : see :class:`ScanPlan`
    anatomy_exposure_ms, tracer_exposure_ms : float
        Exposures of the DAPI (anatomy) and tdTomato (tracer) channels.
    margin_um : float
        How far each section polygon lies outside the tissue outline's convex
        hull (µm), so the tissue edge is imaged.
    slide : VirtualSlide, optional
        The demo slide (default ``acquisition.demo.slide.demo_slide()``).
    section_ids : sequence of str, optional
        Scan only these sections (in this order); default: every section.
    focus : mapping, optional
        :class:`FocusSettings` fields; default: a focus map (the demo slide
        is tilted by about 20 µm over its width, as real slides are).
    analysis : mapping, optional
        :class:`~acquisition.plan.AnalysisSettings` fields (default: the defaults).
    """
    if slide is None:
        from acquisition.demo.slide import demo_slide

        slide = demo_slide()
    sections: list[dict[str, Any]] = []
    truths = list(slide.sections)
    if section_ids is not None:
        by_id = {t.spec.section_id: t for t in truths}
        unknown = [sid for sid in section_ids if sid not in by_id]
        if unknown:
            raise ValueError(f"not on the demo slide: {', '.join(unknown)} (sections: {', '.join(by_id)})")
        truths = [by_id[sid] for sid in section_ids]
    for truth in truths:
        spec = getattr(truth, "spec", truth)
        orientation = getattr(spec, "orientation", "coronal")
        section: dict[str, Any] = {
            "id": getattr(spec, "section_id", None) or truth.section_id,
            "polygon_um": _section_polygon(truth.outline, margin_um),
            "animal": getattr(spec, "animal", ""),
            "group": getattr(spec, "group", ""),
            "level": getattr(spec, "level", ""),
            "orientation": orientation,
            "injection_side": getattr(spec, "injection_side", None),
        }
        # The epicenter is left for the analysis to find (the cavity); the
        # mounting direction (rostral) is what a user knows and writes down.
        rostral = getattr(truth, "rostral_direction", None)
        if orientation == "horizontal" and rostral is not None:
            section["rostral_direction_deg"] = round(math.degrees(math.atan2(rostral[1], rostral[0])), 2)
        sections.append(section)
    return plan_from_dict(
        {
            "name": name,
            # absolute, so the plan file works from any folder
            "hardware_config": hardware_config if hardware_config is not None else DEMO_CONFIG,
            "output": output,
            "objective": objective,
            "channels": [
                {"preset": "DAPI", "exposure_ms": anatomy_exposure_ms, "role": "anatomy"},
                {"preset": "tdTomato", "exposure_ms": tracer_exposure_ms, "role": "tracer"},
            ],
            "overlap_pct": overlap_pct,
            "focus": dict(focus) if focus is not None else {"strategy": "focus_map"},
            "sections": sections,
            "analysis": dict(analysis or {}),
        },
        source="demo_plan",
    )
