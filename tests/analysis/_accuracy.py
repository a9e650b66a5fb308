"""End-to-end accuracy on a virtual microscope: calibrate, scan, analyse, compare with the truth.

Both image models (``tests/analysis/test_accuracy.py``: model A, the demo
microscope; ``test_accuracy_model_b.py``: model B, its independent twin) run
the same chain a lab runs, on a small sensor (512²) and a handful of
sections at 10x, in focus (focus map), noise on:

1. **Calibration through the microscope** (``acquisition.calibration``):
   dark frames per channel at the scan's exposures → offset and read noise
   (:func:`analysis.calibration.measure_dark`); a bead z-stack at the
   slide's bead area → the PSF (:func:`analysis.psf.measure_psf_from_beads`)
   → the object-size model. Model A's renderer is no convolution, so its
   PSF also gets the size offset of size-standard beads rendered by its own
   renderer and camera model (``tests/analysis/_model_a.py``; the demo
   slide has no size standards).
2. **The scan**: a :class:`~acquisition.session.ScanSession` with the live
   analysis, exactly as ``cordscope scan`` runs it.
3. **Flat field** from the scan's own tiles per channel
   (:func:`analysis.flatfield.flat_from_tiles`; the demo slides have no
   uniform specimen), then the scan re-analysed offline with it
   (:func:`analysis.scan_analysis.analyze_scan`, as ``cordscope analyze``).
4. **Truth** on each section's analysis grid: the slide's region masks and
   the true axon coverage of every grid cell (the slide's exact objects
   rendered at a ninth/sixth of a cell and summed), so a measured region is
   compared both with the slide's own region (its truth table) and with the
   truth inside the measured mask (what the segmentation alone gets right,
   whatever convention drew the region).

The scan now calibrates itself (dark frames at its start, the PSF and flat
files beside its config, ``cordscope flatfield SCAN.h5``), but these tests
still hand step 1's results to the analysis themselves (:func:`_interim_wiring`;
moving them to that path is left to do): the dark offset as
the plan's ``dark_offset_adu``, the flat fields as blank-field files of the
plan, the object-size model by wrapping the analysis' segmentation; the
live analysis then runs in a thread of this process
(:class:`analysis.live.AnalysisThread`) so the wrapping reaches it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from acquisition.calibration import acquire_bead_stack, acquire_dark_frames
from acquisition.demo import find_demo_hub
from acquisition.demo.plans import demo_plan
from acquisition.hardware import DEMO_CONFIG, build_core
from acquisition.session import ScanSession
from acquisition.storage import ScanFile, TileStatus
from analysis.calibration import DarkCalibration, measure_dark
from analysis.flatfield import FlatField, FlatFieldError, flat_from_tiles
from analysis.object_size import ObjectSizeModel, measure_size_offset, object_size_model
from analysis.psf import PointSpreadFunction, measure_psf_from_beads
from analysis.results import SavedSection, load_scan_results
from analysis.scan_analysis import analyze_scan
from analysis.settings import AnalysisSettings, segmentation_settings
from analysis.tile import AxonSegmentation, correct_tile, segment_axons

# ------------------------------------------------------------------ targets (issue 13)

MAX_PCT_ERROR_PP = 0.5
"""Per region, |measured − true| % axonal area (percentage points)."""
MAX_PCT_ERROR_REL = 0.15
"""Per region, |measured / true − 1|, where the truth is at least :data:`MIN_PCT_FOR_REL`."""
MIN_PCT_FOR_REL = 0.1
"""Below this true % axonal area a relative error says little (a few objects in a large region)."""
MAX_OBJECT_AREA_ERROR = 0.15
"""Per isolated punctum ≥ :data:`MIN_OBJECT_DIAMETER_UM` across, |measured / physical area − 1|."""
MIN_OBJECT_DIAMETER_UM = 1.5
MIN_TISSUE_DICE = 0.95
MIN_GRAY_WHITE_DICE = 0.9
MAX_GRAY_AREA_ERROR = 0.10
MAX_RATIO_ERROR = 0.10
"""Ratios between sections and between groups, |measured / true ratio − 1|."""
MAX_FLAT_NONUNIFORMITY = 0.03
"""A uniform field after flat-fielding: every pixel within ±3 % of the frame's mean."""

EXPOSURES_MS = {"DAPI": 20.0, "tdTomato": 50.0}
TRACER = "tdTomato"
SENSOR_PX = 512
OBJECTIVE = "10x"
MODEL_B_CONFIG = DEMO_CONFIG.parent / "demo-model-b.cfg"


# ------------------------------------------------------------------ microscopes


@dataclasses.dataclass(frozen=True)
class Microscope:
    """One virtual microscope as the tests drive it.

    Attributes
    ----------
    name : str
    config : Path
        Its Micro-Manager configuration.
    camera : mapping
        Camera properties set before anything (sensor size, noise seed).
    bit_depths : mapping of int to mapping
        Per camera bit depth, the camera properties that make it (an 8-bit
        camera has its own offset and gain).
    size_offset : bool
        Measure the object-size offset on size-standard beads (renderers
        that are no convolution).
    """

    name: str
    config: Path
    camera: Mapping[str, object]
    bit_depths: Mapping[int, Mapping[str, object]]
    size_offset: bool = False


MODEL_A = Microscope(
    name="model A",
    config=DEMO_CONFIG,
    camera={"SensorWidth": SENSOR_PX, "SensorHeight": SENSOR_PX, "Noise": "On", "NoiseSeed": 7,
            "Vignetting_pct": 12.0},
    # an 8-bit camera: its own offset and a gain that keeps bright puncta below full scale
    bit_depths={
        16: {"BitDepth": 16, "DarkOffset_ADU": 100.0, "Gain_e_per_ADU": 0.5},
        8: {"BitDepth": 8, "DarkOffset_ADU": 10.0, "Gain_e_per_ADU": 8.0},
    },
    size_offset=True,
)  # fmt: skip

MODEL_B = Microscope(
    name="model B",
    config=MODEL_B_CONFIG,
    camera={"SensorWidth": SENSOR_PX, "SensorHeight": SENSOR_PX, "Noise": "On", "NoiseSeed": 3},
    bit_depths={16: {"BitDepth": 16}, 8: {"BitDepth": 8}},
)


def make_core(microscope: Microscope, bit_depth: int) -> Any:
    """A core of the microscope with its test camera settings at ``bit_depth``, 10x."""
    core = build_core(microscope.config)
    cam = core.getCameraDevice()
    for prop, value in {**microscope.camera, **microscope.bit_depths[bit_depth]}.items():
        core.setProperty(cam, prop, value)
    core.setConfig("Objective", OBJECTIVE)
    return core


# ------------------------------------------------------------------ calibration


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """What the microscope's calibration images gave."""

    darks: dict[str, DarkCalibration]
    psf: PointSpreadFunction
    size_model: ObjectSizeModel
    pixel_size_um: float
    flats: dict[str, FlatField] = dataclasses.field(default_factory=dict)
    flats_refused: dict[str, str] = dataclasses.field(default_factory=dict)
    """Channels whose tiles could not give a flat field, and why (the estimate's own message)."""


def _camera_mode(core: Any, microscope: Microscope, bit_depth: int) -> None:
    cam = core.getCameraDevice()
    for prop, value in microscope.bit_depths[bit_depth].items():
        core.setProperty(cam, prop, value)


def _darks(core: Any, exposures_ms: Mapping[str, float]) -> dict[str, DarkCalibration]:
    frames = acquire_dark_frames(core, exposures_ms, n_frames=4)
    return {
        ch: measure_dark(
            f.frames, channel=ch, exposure_ms=f.exposure_ms, bit_depth=f.bit_depth, keep_map=True
        )
        for ch, f in frames.items()
    }


def calibrate(core: Any, microscope: Microscope, settings: AnalysisSettings, bit_depth: int) -> Calibration:
    """Dark frames and the bead PSF through the microscope (module docstring, step 1).

    The dark frames are taken in the scan's camera mode (``bit_depth``); the
    bead z-stack always at the camera's full depth, as ``cordscope
    calibrate`` records the objective's PSF once for every scan: the PSF is
    the objective's, and an 8-bit mode's coarse steps leave too few beads to
    measure it (model A at 8 bits, 8 e/ADU: 8 beads, FWHM 0.95 µm, against
    85 beads and 0.67 µm at 16 bits, the same stack taken in each mode).
    """
    darks = _darks(core, EXPOSURES_MS)
    slide = find_demo_hub(core).slide
    area = slide.beads().area_um
    centre = ((area[0] + area[2]) / 2.0, (area[1] + area[3]) / 2.0)
    _camera_mode(core, microscope, 16)
    try:
        bead_dark = _darks(core, {TRACER: EXPOSURES_MS[TRACER]})[TRACER] if bit_depth != 16 else darks[TRACER]
        beads = acquire_bead_stack(
            core, TRACER, EXPOSURES_MS[TRACER], xy_um=centre,
            z_center_um=float(slide.focal_plane_z_um(*centre)), z_range_um=2.0, z_step_um=0.5,
        )  # fmt: skip
    finally:
        _camera_mode(core, microscope, bit_depth)
    p = beads.pixel_size_um
    psf, _ = measure_psf_from_beads(
        beads.frames, pixel_size_um=p, dark_offset_adu=bead_dark.offset_adu, objective=OBJECTIVE
    )
    seg = segmentation_settings(settings)
    if microscope.size_offset:
        from tests.analysis import _model_a

        standards = _model_a.size_standards(np.random.default_rng(5))
        psf = psf.with_size_offset(
            measure_size_offset(standards, psf=psf, pixel_size_um=p, settings=seg).size_offset_um2
        )
    model = object_size_model(psf, pixel_size_um=p, settings=seg)
    return Calibration(darks, psf, model, p)


# ------------------------------------------------------------------ interim wiring


@contextlib.contextmanager
def _interim_wiring(calibration: Calibration) -> Iterator[None]:
    """The analysis segments with the calibration's object-size model (not the scan file's).

    Whatever model the caller passes (``calwire``'s analysis passes the
    scan file's, or None) is replaced by the calibration's.
    """
    import analysis.section_analysis as sa

    real = sa.segment_axons

    def with_model(*args: Any, **kwargs: Any) -> AxonSegmentation:
        return real(*args, **{**kwargs, "size_model": calibration.size_model})

    sa.segment_axons = with_model  # type: ignore[assignment]
    try:
        yield
    finally:
        sa.segment_axons = real  # type: ignore[assignment]


def _analysis_options(calibration: Calibration, flat_dir: Path | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "dark_offset_from": "plan",
        "dark_offset_adu": calibration.darks[TRACER].offset_adu,
        "min_axon_area_um2": MIN_AXON_AREA_UM2,
    }
    if flat_dir is not None:
        # a blank-field image the plan's loader normalises back to the flat (offset + 1000 × flat)
        flats = {}
        for ch, flat in calibration.flats.items():
            path = flat_dir / f"flat-{ch}.npy"
            np.save(path, calibration.darks[ch].offset_adu + 1000.0 * flat.image.astype(np.float64))
            flats[ch] = str(path)
        options["flat_fields"] = flats
    return options


MIN_AXON_AREA_UM2 = 1.0


# ------------------------------------------------------------------ the scan


@dataclasses.dataclass
class AccuracyScan:
    """A calibrated, scanned and analysed set of sections, with the slide that holds their truth."""

    microscope: Microscope
    bit_depth: int
    path: Path
    slide: Any
    calibration: Calibration
    results: dict[str, SavedSection]
    live_faults: list[Any]
    vignetting: dict[str, NDArray[np.float32]]
    """The camera's true illumination map per channel (what a flat field must undo)."""
    camera_scale: float
    """Corrected ADU per photon of the tracer channel (exposure × QE / gain × mean illumination)."""
    camera_offset_adu: float
    """The camera's true dark offset (its ``DarkOffset_ADU`` property)."""
    _truth: dict[str, dict[str, NDArray[Any]]] = dataclasses.field(default_factory=dict)

    def truth(self, section_id: str) -> dict[str, NDArray[Any]]:
        """The slide's truth on a section's analysis grid: region masks and ``axon_fraction`` per cell."""
        if section_id not in self._truth:
            self._truth[section_id] = truth_on_grid(self.slide, self.results[section_id], self.calibration)
        return self._truth[section_id]


def run_accuracy_scan(
    microscope: Microscope, directory: Path, section_ids: tuple[str, ...], *, bit_depth: int = 16
) -> AccuracyScan:
    """Calibrate, scan and analyse ``section_ids`` on a microscope (module docstring)."""
    from analysis.live import AnalysisThread

    logging.getLogger("pymmcore-plus").setLevel(logging.ERROR)
    path = directory / "scan.h5"
    settings = AnalysisSettings(min_axon_area_um2=MIN_AXON_AREA_UM2)
    core = make_core(microscope, bit_depth)
    try:
        slide = find_demo_hub(core).slide
        calibration = calibrate(core, microscope, settings, bit_depth)
        plan = demo_plan(
            output=path, slide=slide, hardware_config=microscope.config, section_ids=list(section_ids),
            objective=OBJECTIVE, anatomy_exposure_ms=EXPOSURES_MS["DAPI"],
            tracer_exposure_ms=EXPOSURES_MS[TRACER], focus={"strategy": "focus_map"},
            analysis=_analysis_options(calibration, None),
        )  # fmt: skip
        with _interim_wiring(calibration):
            session = ScanSession(core, plan, analysis=AnalysisThread, overwrite=True)
            session.start()
            result = session.wait(1800)
        assert result.complete, result.scan.message
        assert session.analysis is not None
        faults = list(getattr(session.analysis, "faults", []))
        vignetting = _vignetting_maps(core)
        scale = _camera_scale(core, vignetting[TRACER])
        offset = float(core.getProperty(core.getCameraDevice(), "DarkOffset_ADU"))
    finally:
        core.close()
    flats = _flats_from_scan(path, calibration)
    calibration = dataclasses.replace(
        calibration,
        flats={ch: f for ch, f in flats.items() if isinstance(f, FlatField)},
        flats_refused={ch: f for ch, f in flats.items() if isinstance(f, str)},
    )
    flat_dir = directory / "flats"
    flat_dir.mkdir(exist_ok=True)
    with _interim_wiring(calibration):
        options = _analysis_options(calibration, flat_dir)
        analyze_scan(path, settings=AnalysisSettings(**options))
    return AccuracyScan(
        microscope,
        bit_depth,
        path,
        slide,
        calibration,
        load_scan_results(path),
        faults,
        vignetting,
        scale,
        offset,
    )


def _camera_device(core: Any) -> Any:
    label = core.getCameraDevice()
    return core._pydevices[label]


def _vignetting_maps(core: Any) -> dict[str, NDArray[np.float32]]:
    """The camera's true illumination over the sensor (1 where the camera has no fall-off)."""
    cam = _camera_device(core)
    shape = (int(core.getImageHeight()), int(core.getImageWidth()))
    if hasattr(cam, "vignetting"):  # model B
        v = np.asarray(cam.vignetting(shape), dtype=np.float32)
    else:  # model A
        from acquisition.demo.devices import vignetting_map

        v = np.asarray(vignetting_map(shape, float(core.getProperty(cam.get_label(), "Vignetting_pct"))))
    return {ch: v for ch in EXPOSURES_MS}


def _camera_scale(core: Any, vignetting: NDArray[np.float32]) -> float:
    """Flat-fielded ADU per photon / ms / pixel of the tracer channel at its exposure."""
    label = core.getCameraDevice()
    qe = float(core.getProperty(label, "QuantumEfficiency"))
    gain = float(core.getProperty(label, "Gain_e_per_ADU"))
    return EXPOSURES_MS[TRACER] * qe / gain * float(np.mean(vignetting))


def _flats_from_scan(path: Path, calibration: Calibration) -> dict[str, FlatField | str]:
    """Each channel's flat field from the scan's own done tiles."""
    with ScanFile.open(path) as scan:
        channels = scan.section(scan.section_ids[0]).channel_names
        tiles: dict[str, list[NDArray[Any]]] = {ch: [] for ch in channels}
        for sid in scan.section_ids:
            sec = scan.section(sid)
            for i in np.flatnonzero(sec.tile_status == TileStatus.DONE):
                images = sec.read_tile(int(i))
                for c, ch in enumerate(channels):
                    tiles[ch].append(images[c].max(axis=0))
    # the dark map, not the mean offset: a camera's column offsets (model B's: 1.5 ADU) are a tenth
    # of the faint tissue signal the flat is measured on
    out: dict[str, FlatField | str] = {}
    for ch, t in tiles.items():
        try:
            out[ch] = flat_from_tiles(t, dark_offset_adu=_dark_map(calibration.darks[ch]), channel=ch)
        except FlatFieldError as e:  # the tiles cannot give one: what it said is the test's to check
            out[ch] = str(e)
    return out


def _dark_map(dark: DarkCalibration) -> NDArray[np.float32] | float:
    return dark.offset_adu if dark.dark_map_adu is None else dark.dark_map_adu


# ------------------------------------------------------------------ truth


def axon_pixels(slide: Any, *, center_um: tuple[float, float], pixel_size_um: float,
                shape: tuple[int, int], section_id: str) -> NDArray[np.bool_]:  # fmt: skip
    """Pixels whose centre lies in one of the section's labelled objects."""
    kw = {"center_um": center_um, "pixel_size_um": pixel_size_um, "shape": shape, "section_id": section_id}
    if hasattr(slide, "render_axon_labels"):  # model B: the objects alone (its region rasters are slow)
        return np.asarray(slide.render_axon_labels(**kw) > 0)
    return np.asarray(slide.render_truth_labels(**kw)["axons"])


def truth_on_grid(slide: Any, section: SavedSection, calibration: Calibration) -> dict[str, NDArray[Any]]:
    """Region masks on the section's analysis grid and each cell's true axon fraction."""
    a = section.analysis
    assert a is not None and a.mask_origin_um is not None and a.mask_cell_um is not None
    rows, cols = a.masks["section"].shape
    cell = a.mask_cell_um
    center = (a.mask_origin_um[0] + cols * cell / 2, a.mask_origin_um[1] + rows * cell / 2)
    out: dict[str, NDArray[Any]] = dict(
        slide.render_truth_labels(
            center_um=center, pixel_size_um=cell, shape=(rows, cols), section_id=section.section_id
        )
    )
    f = max(1, round(cell / calibration.pixel_size_um))
    fine = axon_pixels(
        slide,
        center_um=center,
        pixel_size_um=cell / f,
        shape=(rows * f, cols * f),
        section_id=section.section_id,
    )
    out["axon_fraction"] = fine.reshape(rows, f, cols, f).mean(axis=(1, 3))
    return out


def dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    """Dice coefficient of two masks."""
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def true_pct_in(mask: NDArray[np.bool_], truth: Mapping[str, NDArray[Any]]) -> float:
    """True % axonal area inside a mask of the analysis grid."""
    return float(100.0 * truth["axon_fraction"][mask].sum() / max(mask.sum(), 1))


def pct_error_ok(measured: float, true: float, *, relative: bool = True) -> tuple[bool, str]:
    """Whether a % axonal area meets the targets (the relative one only if ``relative``), and the errors."""
    diff = measured - true
    rel = diff / true if true > 0 else math.inf if diff else 0.0
    ok = abs(diff) <= MAX_PCT_ERROR_PP and (
        not relative or true < MIN_PCT_FOR_REL or abs(rel) <= MAX_PCT_ERROR_REL
    )
    return ok, f"{measured:.4f} vs {true:.4f} ({diff:+.4f} pp, {rel:+.1%})"


# ------------------------------------------------------------------ objects


@dataclasses.dataclass(frozen=True)
class ObjectErrors:
    """Per isolated punctum: measured / physical area − 1; and object counts."""

    errors: NDArray[np.float64]
    n_true: int
    n_found: int


def _extent_um(objects: Any) -> NDArray[np.float64]:
    """Longest extent of each truth object (µm)."""
    if hasattr(objects, "major_axis_um"):  # model B
        return np.asarray(objects.major_axis_um, dtype=np.float64)
    # model A: chains of discs, the farthest disc edge from the centroid, twice
    xy = objects.xy_um
    d = np.hypot(*(objects.disc_xy_um - xy[objects.disc_object]).T) + objects.disc_radius_um
    reach = np.zeros(len(xy))
    np.maximum.at(reach, objects.disc_object, d)
    return 2.0 * reach


def object_errors(scan: AccuracyScan, *, tiles_per_section: int = 3) -> ObjectErrors:
    """Segment the scan's tiles with the most objects as the analysis does; match isolated puncta.

    The tiles are read back from the scan file, corrected with the scan's
    calibration and segmented with its object-size model; a truth object
    counts when it lies 10 px inside the tile, is ≥ 1.5 µm across and has
    no other object within 2 µm of its outline.
    """
    cal = scan.calibration
    flat = cal.flats[TRACER].image if TRACER in cal.flats else None
    settings = segmentation_settings(AnalysisSettings(min_axon_area_um2=MIN_AXON_AREA_UM2))
    errors: list[float] = []
    n_true = n_found = 0
    with ScanFile.open(scan.path) as f:
        for sid in f.section_ids:
            objs = scan.slide.axon_objects(sid)
            if len(objs.area_um2) == 0:
                continue
            sec = f.section(sid)
            tracer = sec.channel_names.index(TRACER)
            p = sec.pixel_size_um
            h, w = sec.tile_shape_px
            xy = sec.tile_xy_um
            inside_tile = [
                (np.abs(objs.xy_um[:, 0] - x) < (w / 2 - 10) * p)
                & (np.abs(objs.xy_um[:, 1] - y) < (h / 2 - 10) * p)
                for x, y in xy
            ]
            counts = np.array([m.sum() for m in inside_tile])
            extent = _extent_um(objs)
            dist, near = cKDTree(objs.xy_um).query(objs.xy_um, k=2)
            gap = dist[:, 1] - 0.5 * (extent + extent[near[:, 1]])
            candidates = (gap > 2.0) & (objs.equivalent_diameter_um >= MIN_OBJECT_DIAMETER_UM)
            for t in np.argsort(counts)[::-1][:tiles_per_section]:
                if counts[t] == 0:
                    continue
                raw = sec.read_tile(int(t))[tracer].max(axis=0)
                seg = segment_axons(
                    correct_tile(raw, dark_offset_adu=cal.darks[TRACER].offset_adu, flat_field=flat),
                    pixel_size_um=p, settings=settings, size_model=cal.size_model,
                )  # fmt: skip
                n_true += int(counts[t])
                rc = seg.objects.centroid_rc
                n_found += int(
                    np.sum(
                        (np.abs(rc[:, 0] - (h - 1) / 2) < h / 2 - 10)
                        & (np.abs(rc[:, 1] - (w - 1) / 2) < w / 2 - 10)
                    )
                )
                errors.extend(_matched_errors(seg, objs, inside_tile[t] & candidates, xy[t], (h, w), p))
    return ObjectErrors(np.asarray(errors), n_true, n_found)


def _matched_errors(
    seg: AxonSegmentation, objs: Any, which: NDArray[np.bool_], tile_xy: NDArray[Any],
    shape: tuple[int, int], p: float,
) -> list[float]:  # fmt: skip
    h, w = shape
    col = (objs.xy_um[:, 0] - (tile_xy[0] - w * p / 2)) / p - 0.5
    row = (objs.xy_um[:, 1] - (tile_xy[1] - h * p / 2)) / p - 0.5
    out = []
    got = seg.objects
    if len(got) == 0:
        return out
    tree = cKDTree(got.centroid_rc)
    for i in np.flatnonzero(which):
        d, j = tree.query((row[i], col[i]))
        if d < 2.0 / p:
            out.append(float(got.target_area_px[j] * p * p / objs.area_um2[i] - 1.0))
    return out


# ------------------------------------------------------------------ the shared tests


def parametrize_sections(metafunc: Any) -> None:
    """``pytest_generate_tests`` of the accuracy modules: ``section_id`` / ``coronal_id`` from the class."""
    cls = metafunc.cls
    if cls is None:
        return
    if "section_id" in metafunc.fixturenames:
        metafunc.parametrize("section_id", cls.SECTIONS)
    if "coronal_id" in metafunc.fixturenames:
        metafunc.parametrize("coronal_id", [s for s in cls.SECTIONS if not s.endswith("lesion")])


class AccuracySuite:
    """The targets of issue 13 on one microscope at one bit depth (subclass per microscope).

    Subclasses set :attr:`MICROSCOPE`, :attr:`SECTIONS` (a few, including
    one L2 section per group, for the ratios) and :attr:`BIT_DEPTH`;
    :attr:`REGIONS_BY_THE_SLIDES_RULES` names the regions whose automatic
    rule follows the same anatomical convention as the slide's truth (their
    % axonal area is compared with the slide's own region as well as with
    the truth inside the measured mask).
    """

    MICROSCOPE: Microscope
    SECTIONS: tuple[str, ...]
    BIT_DEPTH = 16
    REGIONS_BY_THE_SLIDES_RULES: frozenset[str] = frozenset()
    PSF_FWHM_UM: tuple[float, float] = (0.5, 1.5)
    OBJECTS_MIN_N = 200
    FLAT_REFUSED: frozenset[str] = frozenset()
    """Channels whose faint tissue cannot give a flat field on this camera (8-bit)."""
    RELATIVE_SHORTFALL: Mapping[str, str] = {}
    """Region → why its % axonal area misses the relative target on this image model.

    Such a region is held to the absolute target (0.5 pp) in the region
    tests and left out of the ratios; :meth:`test_relative_target_in_regions_that_miss_it`
    asserts the relative target and the ratios there, marked ``xfail(strict=True)``
    with the reason, so a fix shows as an unexpected pass.
    """

    @pytest.fixture(scope="class")
    @classmethod
    def scan(cls, tmp_path_factory: pytest.TempPathFactory) -> AccuracyScan:
        name = f"accuracy-{cls.MICROSCOPE.name.replace(' ', '-')}-{cls.BIT_DEPTH}bit"
        return run_accuracy_scan(
            cls.MICROSCOPE, tmp_path_factory.mktemp(name), cls.SECTIONS, bit_depth=cls.BIT_DEPTH
        )

    # ---------------------------------------------------------------- calibration

    def test_calibration_is_the_microscopes(self, scan: AccuracyScan) -> None:
        cal = scan.calibration
        for ch, dark in cal.darks.items():
            assert dark.bit_depth == self.BIT_DEPTH, ch
            assert dark.offset_adu == pytest.approx(scan.camera_offset_adu, abs=1.0), ch
        lo, hi = self.PSF_FWHM_UM
        assert lo < cal.psf.fwhm_um < hi
        assert cal.psf.n_beads >= 10

    @pytest.mark.parametrize(("channel", "tolerance"), [(TRACER, MAX_FLAT_NONUNIFORMITY), ("DAPI", 0.04)])
    def test_flat_field_makes_a_uniform_field_uniform(
        self, scan: AccuracyScan, channel: str, tolerance: float
    ) -> None:
        """The camera's true illumination divided by the flat from the scan's tiles: flat to ±3 %.

        DAPI's own large-scale structure (gray vs white matter, dense nuclei) is what its estimate
        averages over, so it is held to ±4 %; only the tracer's flat enters the intensities. Tiles
        whose tissue lies within a couple of ADU of an 8-bit camera's offset cannot give one: the
        estimate must say so rather than return a wrong flat.
        """
        cal = scan.calibration
        if channel in self.FLAT_REFUSED:
            assert channel not in cal.flats
            assert "ADU above the dark level" in cal.flats_refused[channel]
            assert "record a blank field" in cal.flats_refused[channel]
            return
        assert channel in cal.flats, cal.flats_refused.get(channel)
        v = scan.vignetting[channel]
        corrected = v / cal.flats[channel].image
        assert np.abs(corrected / corrected.mean() - 1.0).max() <= tolerance
        assert cal.flats[channel].fall_off_pct > 5.0  # the camera's 12 % is seen

    # ---------------------------------------------------------------- regions

    def test_every_section_is_analysed_without_faults(self, scan: AccuracyScan) -> None:
        assert scan.live_faults == []
        assert list(scan.results) == list(self.SECTIONS)
        assert all(s.analysis is not None for s in scan.results.values())

    def test_tissue_mask(self, scan: AccuracyScan, section_id: str) -> None:
        a = scan.results[section_id].analysis
        assert dice(a.masks["section"], scan.truth(section_id)["section"]) >= MIN_TISSUE_DICE

    def test_gray_and_white_matter(self, scan: AccuracyScan, coronal_id: str) -> None:
        a = scan.results[coronal_id].analysis
        truth = scan.truth(coronal_id)
        for region in ("gray_matter", "white_matter"):
            d = dice(a.masks[region], truth[region])
            assert d >= MIN_GRAY_WHITE_DICE, f"{region} Dice {d:.3f}"
            ratio = a.masks[region].sum() / truth[region].sum()
            assert abs(ratio - 1.0) <= MAX_GRAY_AREA_ERROR, f"{region} area {ratio - 1:+.1%}"

    # ---------------------------------------------------------------- % axonal area

    def test_pct_axonal_area_in_every_region(self, scan: AccuracyScan, section_id: str) -> None:
        """Each measured region against the truth inside the same mask: what the segmentation gets right."""
        a = scan.results[section_id].analysis
        truth = scan.truth(section_id)
        bad = []
        for row in a.table:
            if (
                row.region not in truth
                or a.masks[row.region].sum() * a.mask_cell_um**2 < 0.5 * a.maps.bin_um**2
            ):
                continue  # a sliver of a rostro-caudal bin at the section's end
            assert row.imaged_fraction > 0.99, f"{row.region} imaged {row.imaged_fraction:.3f}"
            ok, text = pct_error_ok(
                row.pct_axonal_area,
                true_pct_in(a.masks[row.region], truth),
                relative=row.region not in self.RELATIVE_SHORTFALL,
            )
            if not ok:
                bad.append(f"{row.region}: {text}")
        assert not bad, "; ".join(bad)

    def test_pct_axonal_area_matches_the_slides_regions(self, scan: AccuracyScan, section_id: str) -> None:
        """Regions drawn by the same convention as the slide's truth, against its truth table."""
        a = scan.results[section_id].analysis
        true = {t.region: t for t in scan.slide.truth_table(section_id)}
        bad = []
        for row in a.table:
            t = true.get(row.region)
            if t is None or (
                row.region not in self.REGIONS_BY_THE_SLIDES_RULES and not row.region.startswith("rc_")
            ):
                continue
            if t.area_um2 < 0.5 * a.maps.bin_um**2:
                continue
            ok, text = pct_error_ok(
                row.pct_axonal_area, t.pct_axonal_area, relative=row.region not in self.RELATIVE_SHORTFALL
            )
            if not ok:
                bad.append(f"{row.region}: {text}")
        assert not bad, "; ".join(bad)

    def test_isolated_puncta_get_their_physical_area(self, scan: AccuracyScan) -> None:
        """Per object, puncta ≥ 1.5 µm across with no other object within 2 µm of their outline."""
        found = object_errors(scan)
        e = found.errors
        assert len(e) >= self.OBJECTS_MIN_N
        assert abs(np.median(e)) <= 0.05
        assert np.mean(np.abs(e) <= MAX_OBJECT_AREA_ERROR) >= 0.85
        # no invented objects: touching clustered puncta merge, so fewer are found, never more
        assert 0.85 * found.n_true <= found.n_found <= 1.02 * found.n_true

    def test_ratios_between_sections_and_groups_hold(self, scan: AccuracyScan) -> None:
        """What a study compares: every pair of L2 sections (one per group), region by region."""
        regions = ("section", "white_matter", "gray_matter", "rubrospinal_territory")
        bad = self._ratio_errors(scan, [r for r in regions if r not in self.RELATIVE_SHORTFALL])
        assert not bad, "; ".join(bad)

    def test_relative_target_in_regions_that_miss_it(self, scan: AccuracyScan, request: Any) -> None:
        """:attr:`RELATIVE_SHORTFALL`'s regions against the relative target and the ratios (xfail, strict)."""
        if not self.RELATIVE_SHORTFALL:
            pytest.skip(f"{self.MICROSCOPE.name}: every region is held to the relative target")
        reason = "; ".join(f"{r}: {why}" for r, why in self.RELATIVE_SHORTFALL.items())
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=reason))
        bad = self._ratio_errors(scan, list(self.RELATIVE_SHORTFALL))
        for sid, section in scan.results.items():
            a = section.analysis
            truth = scan.truth(sid)
            for row in a.table:
                if row.region in self.RELATIVE_SHORTFALL and row.region in truth:
                    ok, text = pct_error_ok(row.pct_axonal_area, true_pct_in(a.masks[row.region], truth))
                    if not ok:
                        bad.append(f"{sid} {row.region}: {text}")
        assert not bad, "; ".join(bad)

    def _ratio_errors(self, scan: AccuracyScan, regions: list[str]) -> list[str]:
        l2 = [s for s in self.SECTIONS if s.endswith("-L2")]
        assert len(l2) >= 3
        bad = []
        for region in regions:
            measured, true = {}, {}
            for sid in l2:
                a = scan.results[sid].analysis
                measured[sid] = {r.region: r.pct_axonal_area for r in a.table}[region]
                true[sid] = true_pct_in(a.masks[region], scan.truth(sid))
            for i, s1 in enumerate(l2):
                for s2 in l2[i + 1 :]:
                    if min(true[s1], true[s2]) < MIN_PCT_FOR_REL / 10:
                        continue
                    r = (measured[s1] / measured[s2]) / (true[s1] / true[s2]) - 1.0
                    if abs(r) > MAX_RATIO_ERROR:
                        bad.append(f"{region} {s1}/{s2}: {r:+.1%}")
        return bad

    # ---------------------------------------------------------------- intensity

    def test_mean_tracer_intensity_is_calibrated(self, scan: AccuracyScan, section_id: str) -> None:
        """Positive everywhere, and the camera's ADU per photon times the slide's true photon rate."""
        a = scan.results[section_id].analysis
        true = {t.region: t for t in scan.slide.truth_table(section_id)}
        for row in a.table:
            assert row.mean_tracer_intensity > 0, row.region
        for region in ("section", "white_matter", "gray_matter"):
            if region not in true:
                continue
            row = {r.region: r for r in a.table}[region]
            ratio = row.mean_tracer_intensity / (true[region].mean_tracer_photons * scan.camera_scale)
            assert ratio == pytest.approx(1.0, abs=0.05), region
