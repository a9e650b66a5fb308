"""Fewer tiles: overview outlines that hug the tissue, and the fewest tiles that cover them.

The demo microscope takes the whole-slide overview (4x, 2048² camera, as
``cordscope overview`` does); :func:`analysis.sections.find_sections` finds the
24 sections, once as before this change (edge at the threshold, 100 µm
dilation) and once hugging the tissue with the plan's default margin
(``outline_margin_um``, 30 µm). Each outline is tiled at 10x with a 512²
camera (333 µm tiles) at 10 % overlap, with useq's polygon grid (before) and
with the minimal cover (now, :func:`acquisition.plan.compile.minimal_cover`).

Reported, per section and in total:

- ``outward_um``: how far an outline lies outside the true tissue
  ((outline area − tissue area) ÷ tissue perimeter), and the tissue left
  outside it (must be 0);
- tile counts: ``before`` (dilated outline, grid), ``now`` (hugging outline,
  minimal cover), and ``truth_min``: the minimal cover of the slide's true
  tissue outline without any margin, the least any outline can take;
  ``now_over_truth_min`` is the ratio (target ≤ 1.05 of the minimum at the
  plan's overlap, as ``cordscope validate`` reports it per section for the
  plan's own polygon).

Run: ``.venv/bin/python benchmarks/bench_tiling.py`` (about 20 s); one JSON line on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

TILE_UM = 512 * 0.65
OVERLAP_PCT = 10.0
OLD_DILATION_UM = 100.0


def main() -> dict[str, Any]:
    """Run the benchmark and return its result row."""
    import numpy as np
    from shapely import Polygon

    from acquisition.demo import find_demo_hub
    from acquisition.hardware import build_core
    from acquisition.overview import acquire_overview
    from acquisition.plan import ScanPlan
    from acquisition.plan.compile import grid_cover, minimal_cover
    from analysis.sections import find_sections

    margin = float(ScanPlan.model_fields["outline_margin_um"].default)
    core = build_core()
    try:
        core.setProperty("Camera", "NoiseSeed", 7)
        hub = find_demo_hub(core)
        assert hub is not None
        slide = hub.slide
        core.setExposure(33.0)
        t0 = time.perf_counter()
        ov = acquire_overview(core, z_um=float(slide.focal_plane_z_um(37_500.0, 12_500.0)))
        overview_s = time.perf_counter() - t0
    finally:
        core.close()
    kwargs = {"origin_um": ov.origin_um, "pixel_size_um": ov.pixel_size_um}
    old = find_sections(ov.image, dilation_um=OLD_DILATION_UM, hug_edges=False, **kwargs)
    new = find_sections(ov.image, dilation_um=margin, **kwargs)
    tile = (TILE_UM, TILE_UM)
    rows = []
    for truth in slide.sections:
        tissue = Polygon(truth.outline)
        (before,) = [Polygon(f.polygon_um) for f in old if Polygon(f.polygon_um).contains(tissue.centroid)]
        (now,) = [Polygon(f.polygon_um) for f in new if Polygon(f.polygon_um).contains(tissue.centroid)]
        n_before = len(
            grid_cover(list(before.exterior.coords)[:-1], tile_size_um=tile, overlap_pct=OVERLAP_PCT)
        )
        n_now = len(minimal_cover(now, tile_size_um=tile, overlap_pct=OVERLAP_PCT))
        n_truth = len(minimal_cover(tissue, tile_size_um=tile, overlap_pct=OVERLAP_PCT))
        rows.append(
            {
                "section": truth.section_id,
                "outward_um_before": round((before.area - tissue.area) / tissue.length, 1),
                "outward_um_now": round((now.area - tissue.area) / tissue.length, 1),
                "tissue_outside_pct_now": round(100 * tissue.difference(now).area / tissue.area, 3),
                "before": n_before,
                "now": n_now,
                "truth_min": n_truth,
            }
        )
    total = {k: int(sum(r[k] for r in rows)) for k in ("before", "now", "truth_min")}
    ratios = [r["now"] / r["truth_min"] for r in rows]
    return {
        "benchmark": "tiling",
        "tile_um": TILE_UM,
        "overlap_pct": OVERLAP_PCT,
        "margin_um": margin,
        "overview_s": round(overview_s, 1),
        "sections": len(rows),
        "tiles_before": total["before"],
        "tiles_now": total["now"],
        "tiles_truth_min": total["truth_min"],
        "now_over_before": round(total["now"] / total["before"], 3),
        "now_over_truth_min": round(total["now"] / total["truth_min"], 3),
        "now_over_truth_min_worst_section": round(max(ratios), 3),
        "outward_um_before_mean": round(float(np.mean([r["outward_um_before"] for r in rows])), 1),
        "outward_um_now_mean": round(float(np.mean([r["outward_um_now"] for r in rows])), 1),
        "tissue_outside_pct_now_max": max(r["tissue_outside_pct_now"] for r in rows),
        "per_section": rows,
    }


if __name__ == "__main__":
    row = main()
    sys.stdout.write(json.dumps(row) + "\n")
