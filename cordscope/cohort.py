"""``cordscope demo-cohort``: scan a virtual study cohort on the demo microscope, one file per animal.

Each animal's slide (:mod:`acquisition.demo.cohort`) is put on the demo
microscope's stage and scanned with the live analysis, to
``<out>/<animal>.h5`` (tiles, plan with the animal/group/level labels, and
the analysis groups) with its ``.regions.csv``; the cohort's ground truth
per animal × level × region goes to ``<out>/cohort-truth.csv``.

Speed over resolution: the default is the 4x objective (1.625 µm/px), a
512 × 512 sensor and one fixed focus plane per slide (the slide's focal
plane at the middle of the three sections): a cohort of 5 animals per group
(45 sections, 765 tiles) scanned and analysed in 201–478 s on the shared
2-core development machine (7–8 s per animal when it was idle). At 4x the
segmented % axonal area is 2.2–3.6 times the true one (small puncta blur
over few pixels) but proportional to it, so group comparisons keep their
conclusions (checked against the truth in ``tests/acquisition/demo/test_cohort.py``).
"""

from __future__ import annotations

import csv
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from acquisition.demo import find_demo_hub
from acquisition.demo.cohort import (
    COHORT_SECTION_CENTRES_UM,
    CohortSlide,
    CohortTruthRow,
    cohort_slides,
    cohort_truth,
    render_cohort_slide,
)
from acquisition.demo.plans import demo_plan
from acquisition.demo.slide import CORONAL_LEVELS
from acquisition.errors import CordScopeError
from acquisition.hardware import build_core
from acquisition.session import ScanSession
from analysis.live import AnalysisProcess

__all__ = ["CohortScan", "scan_demo_cohort", "write_truth_csv"]

COHORT_SENSOR_PX = 512
COHORT_OBJECTIVE = "4x"
TRUTH_CSV = "cohort-truth.csv"


@dataclasses.dataclass(frozen=True)
class CohortScan:
    """What :func:`scan_demo_cohort` produced.

    Attributes
    ----------
    scan_files : tuple of Path
        One per animal, in animal order.
    truth_csv : Path
    truth : tuple of CohortTruthRow
    slides : tuple of CohortSlide
    elapsed_s : float
    tiles : int
        Tiles acquired in all.
    """

    scan_files: tuple[Path, ...]
    truth_csv: Path
    truth: tuple[CohortTruthRow, ...]
    slides: tuple[CohortSlide, ...]
    elapsed_s: float
    tiles: int


def write_truth_csv(path: Path, rows: Sequence[CohortTruthRow]) -> Path:
    """Write the cohort's ground truth, one row per section × region."""
    fields = [f.name for f in dataclasses.fields(CohortTruthRow)]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(fields)
        for r in rows:
            w.writerow([getattr(r, k) for k in fields])
    return path


def scan_demo_cohort(
    out_dir: Path,
    *,
    animals_per_group: int = 5,
    levels: Sequence[str] = CORONAL_LEVELS,
    seed: int = 2026,
    sensor_px: int = COHORT_SENSOR_PX,
    objective: str = COHORT_OBJECTIVE,
    on_slide: Callable[[CohortSlide, Path, int, float], None] | None = None,
) -> CohortScan:
    """Scan every animal's slide of a demo cohort with the live analysis.

    Parameters
    ----------
    out_dir : folder for the scan files (created; files of the same names are replaced)
    animals_per_group : int
    levels : coronal levels cut from each animal
    seed : int
        Seed of the slides' content and of the camera noise.
    sensor_px : int
        Demo camera sensor size (square).
    objective : str
        Objective preset of the demo config.
    on_slide : callable, optional
        Called after each slide with (slide, scan file, tiles done, seconds).

    Raises
    ------
    CordScopeError
        When a slide's scan does not complete.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    slides = cohort_slides(animals_per_group, seed=seed, levels=levels)
    t0 = time.perf_counter()
    core = build_core()
    files: list[Path] = []
    virtual = []
    tiles = 0
    try:
        core.setProperty("Camera", "SensorWidth", sensor_px)
        core.setProperty("Camera", "SensorHeight", sensor_px)
        core.setProperty("Camera", "NoiseSeed", seed)
        hub = find_demo_hub(core)
        if hub is None:  # pragma: no cover - build_core() loads the demo config
            raise CordScopeError("the demo cohort needs the demo microscope")
        for slide in slides:
            t_slide = time.perf_counter()
            vs = render_cohort_slide(slide, seed=seed)
            virtual.append(vs)
            hub.set_slide(vs)
            cx = sum(c[0] for c in COHORT_SECTION_CENTRES_UM) / len(COHORT_SECTION_CENTRES_UM)
            cy = sum(c[1] for c in COHORT_SECTION_CENTRES_UM) / len(COHORT_SECTION_CENTRES_UM)
            z = float(vs.focal_plane_z_um(cx, cy))
            path = out_dir / f"{slide.name}.h5"
            plan = demo_plan(
                output=path,
                objective=objective,
                slide=vs,
                name=f"demo cohort {slide.animal} ({slide.group}, seed {seed})",
                focus={"strategy": "fixed", "z_um": z},
            )
            result = ScanSession(core, plan, overwrite=True, analysis=AnalysisProcess).run()
            if not result.complete:
                why = result.analysis_error or result.scan.message
                raise CordScopeError(f"{path}: scan of {slide.animal} ended {result.scan.state}: {why}")
            tiles += result.scan.tiles_done
            files.append(path)
            if on_slide is not None:
                on_slide(slide, path, result.scan.tiles_done, time.perf_counter() - t_slide)
    finally:
        core.close()
    truth = cohort_truth(slides, seed=seed, virtual=virtual)
    truth_csv = write_truth_csv(out_dir / TRUTH_CSV, truth)
    return CohortScan(
        scan_files=tuple(files),
        truth_csv=truth_csv,
        truth=tuple(truth),
        slides=slides,
        elapsed_s=time.perf_counter() - t0,
        tiles=tiles,
    )
