"""End-to-end accuracy: a demo scan with live analysis against the virtual slide's ground truth.

One scan (module fixture) of six sections at 10x with a 512² camera, noise on
and the demo plan's focus map, analysed live by the analysis process of a
scan session and finalized, exactly as ``cordscope scan`` does: the three L2 sections of
rat01 (intact), rat03 (vehicle) and rat05 (treated), rat02's C5 and rat06's
Th7 (both injected on the right, so the tract is on the left) and rat04's
horizontal lesion section. Every number below is read back from the scan
file's analysis groups and compared with ``VirtualSlide.truth_table`` and
truth masks rendered on the analysis grid.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from acquisition.demo.slide import demo_slide
from analysis.results import SavedSection, load_scan_results
from tests.conftest import run_live_scan

pytestmark = pytest.mark.slow

SECTIONS = ("rat01-L2", "rat03-L2", "rat05-L2", "rat02-C5", "rat06-Th7", "rat04-lesion")
CORONAL = SECTIONS[:5]

#: The issue's targets.
MAX_PCT_ERROR_PP = 0.5
MIN_TISSUE_DICE = 0.95
MIN_GRAY_WHITE_DICE = 0.9
MAX_PLACEMENT_ERROR_UM = 50.0


@dataclasses.dataclass
class Scanned:
    path: Path
    results: dict[str, SavedSection]
    faults: list


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> Scanned:
    logging.getLogger("pymmcore-plus").setLevel(logging.ERROR)
    path = tmp_path_factory.mktemp("accuracy") / "slide.h5"
    run = run_live_scan(path, section_ids=SECTIONS, focus={"strategy": "focus_map"})
    assert run.result.complete, run.result.scan.message
    return Scanned(path, load_scan_results(path), run.session.analysis.faults)


def truth_masks(section: SavedSection) -> dict[str, np.ndarray]:
    """The slide's truth masks on the section's analysis grid."""
    a = section.analysis
    assert a is not None and a.mask_origin_um is not None and a.mask_cell_um is not None
    rows, cols = a.masks["section"].shape
    p = a.mask_cell_um
    center = (a.mask_origin_um[0] + cols * p / 2, a.mask_origin_um[1] + rows * p / 2)
    return demo_slide().render_truth_labels(
        center_um=center, pixel_size_um=p, shape=(rows, cols), section_id=section.section_id
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def centroid_um(mask: np.ndarray, cell_um: float) -> np.ndarray:
    r, c = np.nonzero(mask)
    return np.array([c.mean(), r.mean()]) * cell_um


def test_every_section_is_analysed_without_faults(scanned):
    assert scanned.faults == []
    assert list(scanned.results) == list(SECTIONS)
    assert all(s.analysis is not None for s in scanned.results.values())


@pytest.mark.parametrize("section_id", SECTIONS)
def test_pct_axonal_area_per_region_matches_the_truth(scanned, section_id):
    analysis = scanned.results[section_id].analysis
    truth = {t.region: t for t in demo_slide().truth_table(section_id)}
    measured = {r.region: r for r in analysis.table}
    assert set(truth) <= set(measured), f"regions missing: {set(truth) - set(measured)}"
    errors = {}
    for name, t in truth.items():
        if t.area_um2 < 0.5 * (analysis.maps.bin_um**2):
            continue  # a sliver of a rostro-caudal bin at the section's end: no meaningful %
        row = measured[name]
        assert row.imaged_fraction > 0.99, f"{name} imaged {row.imaged_fraction:.3f}"
        errors[name] = row.pct_axonal_area - t.pct_axonal_area
    worst = max(errors, key=lambda k: abs(errors[k]))
    assert abs(errors[worst]) <= MAX_PCT_ERROR_PP, f"{worst}: {errors[worst]:+.3f} pp"


@pytest.mark.parametrize("section_id", SECTIONS)
def test_tissue_mask(scanned, section_id):
    section = scanned.results[section_id]
    assert dice(section.analysis.masks["section"], truth_masks(section)["section"]) >= MIN_TISSUE_DICE


@pytest.mark.parametrize("section_id", CORONAL)
def test_gray_and_white_matter(scanned, section_id):
    section = scanned.results[section_id]
    truth = truth_masks(section)
    for region in ("gray_matter", "white_matter"):
        d = dice(section.analysis.masks[region], truth[region])
        assert d >= MIN_GRAY_WHITE_DICE, f"{region} Dice {d:.3f}"


@pytest.mark.parametrize("section_id", CORONAL)
def test_rubrospinal_territory_is_placed_contralateral_within_50_um(scanned, section_id):
    section = scanned.results[section_id]
    a = section.analysis
    truth = truth_masks(section)["rubrospinal_territory"]
    measured = a.masks["rubrospinal_territory"]
    shift = np.hypot(*(centroid_um(measured, a.mask_cell_um) - centroid_um(truth, a.mask_cell_um)))
    assert shift <= MAX_PLACEMENT_ERROR_UM
    assert 0.9 <= measured.sum() / truth.sum() <= 1.1
    # contralateral to the injection: entirely in the other half
    other = "right" if section.attrs["injection_side"] == "left" else "left"
    assert (measured & a.masks[other]).sum() == measured.sum()


def test_rostro_caudal_bins_are_placed_within_50_um(scanned):
    section = scanned.results["rat04-lesion"]
    a = section.analysis
    truth = truth_masks(section)
    full_bin_cells = (500.0 * 2000.0 * 0.5) / a.mask_cell_um**2
    bins = [n for n in a.masks if n.startswith("rc_")]
    assert len(bins) >= 18  # 9.6 mm in 500 µm bins
    for name in bins:
        assert name in truth, f"{name} not in the truth"
        if truth[name].sum() < full_bin_cells:
            continue  # a partial bin at either end
        shift = np.hypot(
            *(centroid_um(a.masks[name], a.mask_cell_um) - centroid_um(truth[name], a.mask_cell_um))
        )
        assert shift <= MAX_PLACEMENT_ERROR_UM, f"{name}: {shift:.1f} µm"
    # bins are named by signed distance from the epicenter: rostral negative
    assert "rc_-500_0" in bins and "rc_0_500" in bins


def test_the_groups_ordering_at_l2_is_reproduced(scanned):
    truth = {
        sid: {t.region: t.pct_axonal_area for t in demo_slide().truth_table(sid)} for sid in SECTIONS[:3]
    }
    measured = {
        sid: {r.region: r.pct_axonal_area for r in scanned.results[sid].analysis.table} for sid in truth
    }
    for region in ("rubrospinal_territory", "white_matter", "section"):
        by_truth = sorted(truth, key=lambda s: truth[s][region])
        by_measured = sorted(measured, key=lambda s: measured[s][region])
        assert by_measured == by_truth, region
    # intact > treated > vehicle below the lesion, as the slide's AXON_DENSITY says
    rst = {sid: measured[sid]["rubrospinal_territory"] for sid in measured}
    assert rst["rat01-L2"] > rst["rat05-L2"] > rst["rat03-L2"]


def test_heatmap_agrees_with_the_region_table(scanned):
    """The % axonal area map, weighted by imaged tissue, gives back the section's number."""
    for sid, section in scanned.results.items():
        a = section.analysis
        row = {r.region: r for r in a.table}["section"]
        frac = a.maps.imaged_tissue_fraction
        pct = np.nan_to_num(a.maps.pct_axonal_area)
        assert np.sum(pct * frac) / np.sum(frac) == pytest.approx(row.pct_axonal_area, rel=0.02), sid
