"""Calibrated measurement on the second image model (model B: its own optics, camera and slide).

The whole chain a scan runs: dark frames and a bead z-stack taken through
``acquisition.calibration`` on the model-B microscope, offset and PSF measured
from them, the object-size model simulated from that PSF, then tracer tiles of
the rubrospinal territory segmented and compared with model B's geometric truth
(exact object areas and truth masks). 10x, in focus, noise and fixed pattern on,
12 % vignetting, 16-bit and 8-bit camera.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.spatial import cKDTree

from acquisition.calibration import acquire_bead_stack, acquire_dark_frames
from acquisition.demo import find_demo_hub
from acquisition.demo.model_b import BEAD_AREA_UM
from acquisition.hardware import build_core
from analysis.calibration import measure_dark
from analysis.object_size import object_size_model
from analysis.psf import measure_psf_from_beads
from analysis.tile import AxonSegmentationSettings, correct_tile, segment_axons

SECTIONS = ("rat11-C5", "rat13-L2", "rat12-C5")
EXPOSURE_MS = 50.0
SETTINGS = AxonSegmentationSettings(min_area_um2=1.0)


@pytest.fixture(scope="module", params=[16, 8], ids=["16bit", "8bit"])
def calibrated(request):
    """(core, slide, dark offset, object-size model) for model B at a bit depth."""
    logging.getLogger("pymmcore-plus").setLevel(logging.ERROR)
    core = build_core("hardware_configs/demo-model-b.cfg")
    cam = core.getCameraDevice()
    for prop, value in (
        ("SensorWidth", 768),
        ("SensorHeight", 768),
        ("NoiseSeed", 3),
        ("BitDepth", request.param),
    ):
        core.setProperty(cam, prop, value)
    core.setConfig("Objective", "10x")
    slide = find_demo_hub(core).slide
    frames = acquire_dark_frames(core, {"tdTomato": EXPOSURE_MS}, n_frames=4)["tdTomato"]
    dark = measure_dark(
        frames.frames, channel="tdTomato", exposure_ms=EXPOSURE_MS, bit_depth=frames.bit_depth
    )
    centre = ((BEAD_AREA_UM[0] + BEAD_AREA_UM[2]) / 2, (BEAD_AREA_UM[1] + BEAD_AREA_UM[3]) / 2)
    beads = acquire_bead_stack(
        core, "tdTomato", EXPOSURE_MS, xy_um=centre, z_center_um=float(slide.focal_plane_z_um(*centre)),
        z_range_um=2.0, z_step_um=0.5,
    )  # fmt: skip
    psf, _ = measure_psf_from_beads(
        beads.frames, pixel_size_um=beads.pixel_size_um, dark_offset_adu=dark.offset_adu, min_beads=5
    )
    model = object_size_model(psf, pixel_size_um=beads.pixel_size_um, settings=SETTINGS)
    core.setConfig("Channel", "tdTomato")
    core.setExposure(EXPOSURE_MS)
    yield core, slide, dark, psf, model
    core.close()


def snap(core, slide, section_id):
    sec = slide.section(section_id)
    xy = tuple(float(v) for v in np.asarray(sec.rubrospinal_territory).mean(axis=0))
    core.setXYPosition(*xy)
    core.setPosition(float(slide.focal_plane_z_um(*xy)))
    core.snapImage()
    image = core.getImage()
    p = core.getPixelSizeUm()
    truth = slide.render_truth_labels(center_um=xy, pixel_size_um=p, shape=image.shape, section_id=section_id)
    return image, truth, xy, p


def test_dark_offset_and_psf_are_model_bs(calibrated):
    core, _, dark, psf, _ = calibrated
    assert dark.offset_adu == pytest.approx(
        float(core.getProperty(core.getCameraDevice(), "DarkOffset_ADU")), abs=1.5
    )
    # its Airy-based PSF at 10x/0.30: FWHM ≈ 0.91 µm, with the 0.454 µm pixel ≈ 1 µm
    assert 0.85 < psf.fwhm_um < 1.15


@pytest.mark.slow
@pytest.mark.parametrize("section_id", SECTIONS)
def test_rubrospinal_pct_axonal_area_within_targets(calibrated, section_id):
    core, slide, dark, _, model = calibrated
    image, truth, _, p = snap(core, slide, section_id)
    seg = segment_axons(
        correct_tile(image, dark_offset_adu=dark.offset_adu),
        pixel_size_um=p,
        settings=SETTINGS,
        size_model=model,
    )
    axons = truth["axons"]
    for region in ("rubrospinal_territory", "section"):
        inside = truth[region]
        measured = 100 * (seg.mask & inside).sum() / inside.sum()
        true = 100 * (axons & inside).sum() / inside.sum()
        assert abs(measured - true) <= 0.5, region
        assert abs(measured / true - 1) <= 0.15, region


@pytest.mark.slow
def test_isolated_objects_get_their_physical_area(calibrated):
    """Per object, puncta ≥ 1.5 µm across that have no neighbour within 2 µm."""
    core, slide, dark, _, model = calibrated
    errors, n_true, n_found = [], 0, 0
    for section_id in SECTIONS:
        image, _, xy, p = snap(core, slide, section_id)
        seg = segment_axons(
            correct_tile(image, dark_offset_adu=dark.offset_adu), pixel_size_um=p, settings=SETTINGS,
            size_model=model,
        )  # fmt: skip
        objs = slide.axon_objects(section_id)
        h, w = image.shape
        col = (objs.xy_um[:, 0] - (xy[0] - w * p / 2)) / p - 0.5
        row = (objs.xy_um[:, 1] - (xy[1] - h * p / 2)) / p - 0.5
        inside = (col > 10) & (col < w - 10) & (row > 10) & (row < h - 10)
        n_true += int(inside.sum())
        n_found += len(seg.objects)
        dist, near = cKDTree(objs.xy_um).query(objs.xy_um, k=2)
        gap = dist[:, 1] - 0.5 * (objs.major_axis_um + objs.major_axis_um[near[:, 1]])
        for i in np.flatnonzero(inside & (gap > 2.0) & (objs.equivalent_diameter_um >= 1.5)):
            d = np.hypot(seg.objects.centroid_rc[:, 0] - row[i], seg.objects.centroid_rc[:, 1] - col[i])
            j = int(np.argmin(d))
            if d[j] < 2.0 / p:
                errors.append(seg.objects.target_area_px[j] * p * p / objs.area_um2[i] - 1)
    errors = np.asarray(errors)
    assert len(errors) > 500
    assert abs(np.median(errors)) <= 0.05
    assert np.mean(np.abs(errors) <= 0.15) >= 0.85
    # no invented objects: touching clustered puncta merge, so fewer are found, never more
    assert 0.85 * n_true <= n_found <= 1.02 * n_true
