"""End-to-end accuracy on model A (the demo microscope) against its virtual slide's geometric truth.

The shared suite (:class:`tests.analysis._accuracy.AccuracySuite`: calibration
through the microscope, a scan session with the live analysis, a flat field from
the scan's tiles, the targets of issue 13) on six demo sections at 10x with a
512² camera, noise on, the demo plan's focus map and a 12 % illumination
fall-off: the three L2 sections of rat01 (intact), rat03 (vehicle) and rat05
(treated), rat02's C5 and rat06's Th7 (both injected on the right, so the tract
is on the left) and rat04's horizontal lesion section; and two of them with an
8-bit camera. Model A's own checks follow: its rubrospinal territory and
rostro-caudal bins follow the slide's conventions, so their placement is
checked too.

Model A's gray matter misses the relative target (its fibres are not blurred
by a convolution; :data:`FIBRES_ARE_NO_CONVOLUTION` has the measured numbers):
there it is held to the absolute one, and the relative target is asserted as
a strict xfail. Its 8-bit camera (8 e/ADU) puts the tissue 1.5-1.9 ADU above
the offset with under an ADU of noise, where a flat field from the tiles is
refused (the tests check the refusal).
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import pytest

from tests.analysis._accuracy import MODEL_A, AccuracyScan, AccuracySuite, parametrize_sections

# a class-scoped fixture calibrates, scans and analyses (2-4 min here): beyond the suite-wide 300 s under load
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MAX_PLACEMENT_ERROR_UM = 50.0

FIBRES_ARE_NO_CONVOLUTION = (
    "model A stamps each disc of a beaded fibre with its own soft edge (no convolution) and adds "
    "overlapping discs (twice the brightness in each lens, every ~1.3 µm), so its 15-50 µm gray-matter "
    "fibres are not the PSF-blurred objects the bead-measured object-size model expects: per fibre "
    "0.53-1.05 × the true area, median 0.75 (19 fibres of rat01-L2; 0.94 × without the size model), "
    "gray matter % axonal area -15 to -23 % (within 0.04 pp), rat01/rat05-L2 ratio -11.5 % at 8 bits; "
    "model B, a convolution, meets the target"
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_sections(metafunc)


def centroid_um(mask: np.ndarray, cell_um: float) -> np.ndarray:
    r, c = np.nonzero(mask)
    return np.array([c.mean(), r.mean()]) * cell_um


class TestModelA(AccuracySuite):
    MICROSCOPE = MODEL_A
    SECTIONS = ("rat01-L2", "rat03-L2", "rat05-L2", "rat02-C5", "rat06-Th7", "rat04-lesion")
    REGIONS_BY_THE_SLIDES_RULES = frozenset(
        {
            "section",
            "gray_matter",
            "white_matter",
            "left",
            "right",
            "dorsal",
            "ventral",
            "rubrospinal_territory",
        }
    )
    PSF_FWHM_UM = (0.5, 1.0)  # σ 0.45 px of 0.65 µm with the pixel's box: FWHM ≈ 0.75 µm
    OBJECTS_MIN_N = 300
    RELATIVE_SHORTFALL = MappingProxyType({"gray_matter": FIBRES_ARE_NO_CONVOLUTION})

    def test_rubrospinal_territory_is_placed_contralateral_within_50_um(
        self, scan: AccuracyScan, coronal_id: str
    ) -> None:
        section = scan.results[coronal_id]
        a = section.analysis
        truth = scan.truth(coronal_id)["rubrospinal_territory"]
        measured = a.masks["rubrospinal_territory"]
        shift = np.hypot(*(centroid_um(measured, a.mask_cell_um) - centroid_um(truth, a.mask_cell_um)))
        assert shift <= MAX_PLACEMENT_ERROR_UM
        assert 0.9 <= measured.sum() / truth.sum() <= 1.1
        # contralateral to the injection: entirely in the other half
        other = "right" if section.attrs["injection_side"] == "left" else "left"
        assert (measured & a.masks[other]).sum() == measured.sum()

    def test_rostro_caudal_bins_are_placed_within_50_um(self, scan: AccuracyScan) -> None:
        a = scan.results["rat04-lesion"].analysis
        truth = scan.truth("rat04-lesion")
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

    def test_the_groups_ordering_at_l2_is_reproduced(self, scan: AccuracyScan) -> None:
        l2 = self.SECTIONS[:3]
        truth = {sid: {t.region: t.pct_axonal_area for t in scan.slide.truth_table(sid)} for sid in l2}
        measured = {
            sid: {r.region: r.pct_axonal_area for r in scan.results[sid].analysis.table} for sid in l2
        }
        for region in ("rubrospinal_territory", "white_matter", "section"):
            assert sorted(measured, key=lambda s: measured[s][region]) == sorted(
                truth, key=lambda s: truth[s][region]
            ), region
        # intact > treated > vehicle below the lesion, as the slide's AXON_DENSITY says
        rst = {sid: measured[sid]["rubrospinal_territory"] for sid in measured}
        assert rst["rat01-L2"] > rst["rat05-L2"] > rst["rat03-L2"]

    def test_heatmap_agrees_with_the_region_table(self, scan: AccuracyScan) -> None:
        """The % axonal area map, weighted by imaged tissue, gives back the section's number."""
        for sid, section in scan.results.items():
            a = section.analysis
            row = {r.region: r for r in a.table}["section"]
            frac = a.maps.imaged_tissue_fraction
            pct = np.nan_to_num(a.maps.pct_axonal_area)
            assert np.sum(pct * frac) / np.sum(frac) == pytest.approx(row.pct_axonal_area, rel=0.02), sid


class TestModelA8Bit(AccuracySuite):
    """An 8-bit camera (offset 10 ADU, 8 e/ADU): the offset comes from its dark frames, not a default."""

    MICROSCOPE = MODEL_A
    SECTIONS = ("rat01-L2", "rat03-L2", "rat05-L2", "rat02-C5")
    BIT_DEPTH = 8
    REGIONS_BY_THE_SLIDES_RULES = TestModelA.REGIONS_BY_THE_SLIDES_RULES
    PSF_FWHM_UM = TestModelA.PSF_FWHM_UM
    OBJECTS_MIN_N = 200
    RELATIVE_SHORTFALL = TestModelA.RELATIVE_SHORTFALL
    # tissue 1.5 (tdTomato) and 1.9 (DAPI) ADU above the offset, noise 0.56 and 0.7 ADU
    FLAT_REFUSED = frozenset({"tdTomato", "DAPI"})
