"""Scan files for study tests: one real scan of one section, copied into a labelled synthetic cohort."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np


def scan_one_section(out_dir: Path, *, analysis: bool = True, name: str = "base") -> Path:
    """Scan one demo-cohort L2 section at 4x (512² sensor, fixed focus); a few seconds."""
    from acquisition.demo import find_demo_hub
    from acquisition.demo.cohort import cohort_slides, render_cohort_slide
    from acquisition.demo.plans import demo_plan
    from acquisition.session import ScanSession
    from analysis.live import AnalysisProcess
    from tests.conftest import make_demo_core

    slide = cohort_slides(1, levels=("L2",))[0]
    vs = render_cohort_slide(slide)
    core = make_demo_core(sensor_px=512)
    try:
        hub = find_demo_hub(core)
        assert hub is not None
        hub.set_slide(vs)
        path = out_dir / f"{name}.h5"
        z = float(vs.focal_plane_z_um(41_000.0, 12_500.0))
        plan = demo_plan(output=path, objective="4x", slide=vs, focus={"strategy": "fixed", "z_um": z})
        session = ScanSession(core, plan, overwrite=True, analysis=AnalysisProcess if analysis else None)
        assert session.run().complete
    finally:
        core.close()
    return path


def relabel(path: Path, section_id: str, **attrs: str | None) -> None:
    """Set (or delete, with None) section attributes of a scan file."""
    with h5py.File(path, "r+") as f:
        sec = f["sections"][section_id]
        for k, v in attrs.items():
            if v is None:
                if k in sec.attrs:
                    del sec.attrs[k]
            else:
                sec.attrs[k] = v


def scale_results(path: Path, section_id: str, factor: float) -> None:
    """Multiply the axon area and % axonal area of every region (and the map) by ``factor``."""
    with h5py.File(path, "r+") as f:
        g = f["sections"][section_id]["analysis"]
        table = g["regions_table"][()]
        table["axon_area_um2"] *= factor
        table["pct_axonal_area"] *= factor
        g["regions_table"][...] = table
        g["pct_axonal_area_map"][...] = g["pct_axonal_area_map"][()] * factor


def synthetic_cohort(
    base: Path,
    out_dir: Path,
    factors: Mapping[str, Sequence[float]],
    *,
    level: str = "L2",
) -> list[Path]:
    """Copies of ``base`` (one section), one per animal, labelled and scaled by its factor.

    Animals are named ``<group>-<k>``; sides alternate left/right.
    """
    with h5py.File(base, "r") as f:
        (section_id,) = list(f["sections"])
    paths = []
    for group, fs in factors.items():
        for k, factor in enumerate(fs):
            animal = f"{group}-{k + 1}"
            p = out_dir / f"{animal}.h5"
            shutil.copyfile(base, p)
            relabel(
                p,
                section_id,
                animal=animal,
                group=group,
                level=level,
                injection_side=("left", "right")[k % 2],
            )
            scale_results(p, section_id, factor)
            paths.append(p)
    return paths


def base_values(base: Path) -> dict[str, float]:
    """% axonal area per region of the base file's one section."""
    from analysis.results import load_scan_results

    (sec,) = load_scan_results(base).values()
    assert sec.analysis is not None
    return {r.region: r.pct_axonal_area for r in sec.analysis.table}


def close(a: float, b: float) -> bool:
    return bool(np.isclose(a, b, rtol=1e-9, atol=0))
