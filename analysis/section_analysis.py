"""One section's analysis, fed tile by tile: mosaic, regional sums, registration; results and state.

:class:`SectionAnalysis` is the unit both the live worker and the offline
rerun use. Per tile (:meth:`SectionAnalysis.add_tile`):

1. dark/flat correction and axon segmentation of the tracer channel at full
   resolution (:mod:`analysis.tile`);
2. one reduction of the tile, in its own pixel frame, to ``f × f`` pixel
   blocks (``f`` = the analysis grid's cell in pixels, 6 at 10x): the mean
   corrected value of each channel and the number of axon-mask pixels per
   block (:class:`ReducedTile`, three passes over the tile);
3. placement of those blocks on the section's stage-aligned grid through the
   pixel-size affine (:class:`~analysis.geometry.TileOnGrid`): the blended
   mosaic (:class:`~analysis.mosaic.SectionMosaic`) and the overlap-safe
   per-cell sums (:class:`~analysis.maps.SectionAccumulator`), on reduced
   grids only;
4. with registration on, the measurement of the tile's offset to each
   already analysed edge neighbour from their overlap strips
   (:func:`~analysis.registration.measure_strip_shift`); the anatomy strip a
   neighbour still to come will need is kept (raw, only the overlap).

Determinism
-----------
Every per-tile contribution is rounded to a dyadic grid before it is added
(mosaic and sums), ownership of each grid cell is decided by its centre
alone, and each neighbour pair is measured once from the two tiles' strips
(cut by the planned geometry), so the state after a set of tiles does not
depend on the order they arrived in: live and offline results are identical
to the last digit.

Registration
------------
Tiles are placed at their planned positions as they arrive. At
:meth:`SectionAnalysis.results` the measured pairs are solved for the tile
positions (least squares in the tiles' pixel frame, mapped to the stage
through the affine; zero mean correction, outliers dropped). If some tile
moves by more than one tile pixel (an inaccurate stage), the section is
rebuilt with every tile at its registered position — from the reduced tiles
kept in memory (:class:`ReducedTile`, ≈ 10 bytes per grid cell of a tile),
without reading or segmenting a tile again; otherwise the planned positions
stand (they are then within a pixel). Positions and pair measurements are
written with the results.

State
-----
:meth:`SectionAnalysis.save_state` / :meth:`SectionAnalysis.load_state`
move a section's state (sums, mosaic, pairs, reduced tiles) to an HDF5 group
and back, so the live worker keeps only the sections being scanned in memory.
Memory per section is the grid (≈ 56 bytes per cell with two channels), the
reduced tiles (with registration on) and the raw overlap strips of tiles
whose neighbours are still to come; nothing grows with the square of the
tile count (``acquisition.plan.checks.section_analysis_bytes`` gives it before a scan).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import h5py
import numpy as np
import yaml
from numpy.typing import ArrayLike, NDArray

from acquisition.storage import SectionReader
from analysis.calibration import AppliedCalibration, flags_of_reduced_tile, uncalibrated
from analysis.geometry import (
    affine_from_attr,
    footprint_bbox_um,
    pixel_size_from_affine,
    stage_offset_to_px,
    validate_affine,
)
from analysis.maps import (
    AccumulatorContribution,
    Heatmaps,
    RegionRow,
    SectionAccumulator,
    heatmaps,
    region_table,
)
from analysis.mosaic import MosaicContribution, SectionMosaic
from analysis.region_edits import analysis_records
from analysis.regions import SectionAxes, SectionRegions, section_regions
from analysis.registration import (
    Registration,
    edge_neighbour_pairs,
    measure_strip_shift,
    overlap_regions,
    registration_from_pairs,
)
from analysis.results_format import SavedAnalysis, read_analysis, write_analysis
from analysis.settings import AnalysisSettings, segmentation_settings
from analysis.tile import correct_tile, segment_axons
from analysis.tile_flags_format import TileFlagArrays, TileFlagTable

__all__ = [
    "LiveSnapshot",
    "ReducedTile",
    "SectionAnalysis",
    "SectionResults",
    "TileReader",
    "channel_roles",
    "regions_from_json",
    "regions_to_json",
]

logger = logging.getLogger(__name__)

#: A function giving a tile's raw images ((C, Z, H, W) ADU) from the scan file, or None if not done.
TileReader = Callable[[int], "np.ndarray | None"]

#: Pairs whose planned overlap is narrower than this (px, either direction) are not measured.
_OVERLAP_MIN_PX = 16
#: A section is rebuilt at registered positions when a tile moves by more than this (tile px);
#: below, placement at the planned positions is as good as the measurement.
_REBUILD_CORRECTION_PX = 1.0


def channel_roles(plan_yaml: str, channel_names: Sequence[str]) -> tuple[int, int]:
    """Indices of the tracer and anatomy channels, from the plan's channel roles.

    Parameters
    ----------
    plan_yaml : str
        ``ScanFile.plan_yaml``; its ``channels`` list gives ``preset`` and ``role``.
    channel_names : sequence of str
        The section's channel names (presets), in tile order.

    Returns
    -------
    (tracer_index, anatomy_index)
    """
    plan = yaml.safe_load(plan_yaml) or {}
    roles = {c.get("preset"): c.get("role") for c in plan.get("channels", []) if isinstance(c, dict)}
    found: dict[str, int] = {}
    for i, name in enumerate(channel_names):
        role = roles.get(name)
        if role in ("tracer", "anatomy"):
            if role in found:
                raise ValueError(
                    f"two {role} channels in the plan: {channel_names[found[role]]!r} and {name!r}"
                )
            found[role] = i
    missing = [r for r in ("tracer", "anatomy") if r not in found]
    if missing:
        raise ValueError(
            f"the scan's plan names no {' and no '.join(missing)} channel among {list(channel_names)}"
        )
    return found["tracer"], found["anatomy"]


# ---------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class SectionResults:
    """A section's results: region masks, region table and heatmaps.

    Attributes
    ----------
    section_id : str
    regions : SectionRegions
    table : list of RegionRow
    maps : Heatmaps
    n_tiles_analysed : int
    registration : Registration or None
        Tile positions solved from the measured pairs (None with registration off).
    rebuilt_at_registered_positions : bool
        Whether the mosaic and sums were rebuilt with tiles at registered positions.
    """

    section_id: str
    regions: SectionRegions
    table: list[RegionRow]
    maps: Heatmaps
    n_tiles_analysed: int
    registration: Registration | None = None
    rebuilt_at_registered_positions: bool = False
    source: SectionAnalysis | None = dataclasses.field(default=None, repr=False, compare=False)
    """The state the results come from (the section itself, or its rebuild)."""


@dataclasses.dataclass(frozen=True)
class LiveSnapshot:
    """A section's analysis state, copied (see :meth:`analysis.scan_analysis.ScanAnalysis.snapshot`).

    Attributes
    ----------
    section_id : str
    anatomy_mosaic, tracer_mosaic : (rows, cols) float32
        Reduced mosaics (corrected values), NaN where nothing is imaged yet.
    mosaic_origin_um : (2,) float64
        Stage (x, y) of the mosaics' top-left corner.
    mosaic_pixel_um : float
        Mosaic pixel size (µm); the region masks use the same grid.
    maps : Heatmaps
        % axonal area and mean tracer per bin (NaN where nothing imaged).
    regions : SectionRegions or None
        The latest region masks (None before the first could be computed).
    table : list of RegionRow
        Region table on those masks (empty without masks).
    n_tiles_analysed, n_tiles : int
    """

    section_id: str
    anatomy_mosaic: NDArray[np.float32]
    tracer_mosaic: NDArray[np.float32]
    mosaic_origin_um: NDArray[np.float64]
    mosaic_pixel_um: float
    maps: Heatmaps
    regions: SectionRegions | None
    table: list[RegionRow]
    n_tiles_analysed: int
    n_tiles: int

    @property
    def masks(self) -> dict[str, NDArray[np.bool_]]:
        """Region name → mask on the mosaic grid (empty before the first regions)."""
        return {} if self.regions is None else dict(self.regions.masks)


def regions_to_json(regions: SectionRegions) -> str:
    """Everything of a SectionRegions but its masks, as JSON (axes, epicenter, bins...)."""
    d = {
        "origin_um": list(regions.origin_um),
        "pixel_size_um": regions.pixel_size_um,
        "orientation": regions.orientation,
        "axes": dataclasses.asdict(regions.axes),
        "epicenter_um": None if regions.epicenter_um is None else list(regions.epicenter_um),
        "epicenter_source": regions.epicenter_source,
        "bin_edges_um": [list(e) for e in regions.bin_edges_um],
        "user_regions": list(regions.user_regions),
        "region_names": list(regions.masks),
    }
    return json.dumps(d, sort_keys=True)


def regions_from_json(text: str, masks: Mapping[str, NDArray[np.bool_]]) -> SectionRegions:
    """Rebuild a SectionRegions from :func:`regions_to_json` text and its masks."""
    d = json.loads(text)

    def pair(v: Any) -> tuple[float, float] | None:
        return None if v is None else (float(v[0]), float(v[1]))

    a = d["axes"]
    axes = SectionAxes(
        centre_um=pair(a["centre_um"]) or (0.0, 0.0),
        midline_point_um=pair(a["midline_point_um"]) or (0.0, 0.0),
        right_direction=pair(a["right_direction"]) or (1.0, 0.0),
        ventral_direction=pair(a["ventral_direction"]),
        rostral_direction=pair(a["rostral_direction"]),
        rotation_deg=float(a["rotation_deg"]),
    )
    names = d.get("region_names") or list(masks)
    return SectionRegions(
        masks={n: np.asarray(masks[n], dtype=bool) for n in names if n in masks},
        origin_um=pair(d["origin_um"]) or (0.0, 0.0),
        pixel_size_um=float(d["pixel_size_um"]),
        orientation=d["orientation"],
        axes=axes,
        epicenter_um=pair(d["epicenter_um"]),
        epicenter_source=d["epicenter_source"],
        bin_edges_um=tuple((float(x), float(y)) for x, y in d["bin_edges_um"]),
        user_regions=tuple(d["user_regions"]),
    )


def snapshot_from_saved(section_id: str, saved: SavedAnalysis, regions_json: str | None) -> LiveSnapshot:
    """A LiveSnapshot of a section whose results were written (final or set aside)."""
    if saved.mosaic is None or saved.mosaic_origin_um is None or saved.mosaic_pixel_um is None:
        raise ValueError(f"section {section_id}: the saved analysis has no mosaic")
    params = saved.parameters
    regions = None if regions_json is None else regions_from_json(regions_json, saved.masks)
    return LiveSnapshot(
        section_id=section_id,
        anatomy_mosaic=saved.mosaic[int(params["anatomy_channel"])],
        tracer_mosaic=saved.mosaic[int(params["tracer_channel"])],
        mosaic_origin_um=saved.mosaic_origin_um,
        mosaic_pixel_um=saved.mosaic_pixel_um,
        maps=saved.maps,
        regions=regions,
        table=list(saved.table),
        n_tiles_analysed=int(params.get("n_tiles_analysed", 0)),
        n_tiles=int(params.get("n_tiles", 0)),
    )


# ---------------------------------------------------------------- the section


@dataclasses.dataclass(frozen=True, eq=False)
class ReducedTile:
    """One analysed tile reduced in its own pixel frame: everything placing it again needs.

    Attributes
    ----------
    means : (C, nh, nw) float32
        Mean corrected value of each channel over each ``f × f`` pixel block
        (:class:`~analysis.geometry.BlockLattice` of the section's grid).
    axon_counts : (nh, nw) uint16
        Pixels of the full-resolution axon mask in each block.
    """

    means: NDArray[np.float32]
    axon_counts: NDArray[np.uint16]

    @property
    def nbytes(self) -> int:
        """Memory held (bytes)."""
        return int(self.means.nbytes + self.axon_counts.nbytes)


def _grid_margin_um(settings: AnalysisSettings, rebuilt: bool) -> float:
    # the grid covers the planned footprints plus the largest trusted registration correction
    return settings.max_registration_correction_um if (settings.register_tiles or rebuilt) else 0.0


def _grid_bbox_um(
    tile_xy_um: NDArray[np.float64],
    affine_um: NDArray[np.float64],
    tile_shape_px: tuple[int, int],
    margin_um: float,
) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = footprint_bbox_um(tile_xy_um, affine_um, tile_shape_px)
    return x0 - margin_um, y0 - margin_um, x1 + margin_um, y1 + margin_um


class SectionAnalysis:
    """Per-section analysis state: mosaic, accumulator, registration; fed tile by tile.

    Parameters
    ----------
    section_id : str
    tile_xy_um : (n_tiles, 2) array
        Planned tile centres (µm); they fix tile ownership and are the tile positions
        unless the section is rebuilt at registered positions.
    tile_shape_px : (H, W)
    pixel_size_um : float
        Tile pixel size (µm); ``sqrt(|det A|)`` of the affine when one is given.
    n_channels : int
    tracer_channel, anatomy_channel : int
        Channel indices.
    section_attrs : mapping
        Section attributes (``SectionReader.attrs``): ``orientation``, ``injection_side``,
        ``rostral_direction_deg``, ``lesion_epicenter_um``, ``region_polygons_um``.
    settings : AnalysisSettings
    flat_fields : sequence of (H, W) float32 or None, per channel, optional
        Normalised flat fields (:func:`analysis.settings.load_flat_fields`); default:
        the calibration's.
    calibration : AppliedCalibration, optional
        What the scan's calibration decided (:func:`analysis.calibration.applied_calibration`):
        the dark offset per channel, flat fields, the tracer's object-size model, the
        read noise and bit depth the per-tile flags use; recorded with the results.
        Default: the plan's ``dark_offset_adu`` for every channel, no object-size model.
    channel_names : sequence of str
        Channel (preset) names, in tile order.
    read_tile : callable, optional
        ``read_tile(index)`` → the raw tile from the scan file (or None if not done). Used
        to measure a pair whose first tile's strip is no longer in memory (a section set
        aside and brought back); without it those pairs are not measured.
    tile_centres_um : (n_tiles, 2) array, optional
        Positions to place tiles at (default ``tile_xy_um``); set when rebuilding.
    pixel_affine_um : (2, 2) array, optional
        Pixel-size affine of the tiles (:mod:`analysis.geometry`; default
        ``pixel_size_um · I``, a camera aligned with the stage).
    """

    def __init__(
        self,
        *,
        section_id: str,
        tile_xy_um: ArrayLike,
        tile_shape_px: tuple[int, int],
        pixel_size_um: float,
        n_channels: int,
        tracer_channel: int,
        anatomy_channel: int,
        section_attrs: Mapping[str, Any] | None = None,
        settings: AnalysisSettings | None = None,
        flat_fields: Sequence[NDArray[np.float32] | None] | None = None,
        channel_names: Sequence[str] = (),
        read_tile: TileReader | None = None,
        tile_centres_um: ArrayLike | None = None,
        pixel_affine_um: ArrayLike | None = None,
        calibration: AppliedCalibration | None = None,
    ) -> None:
        self.section_id = str(section_id)
        self.tile_xy_um = np.asarray(tile_xy_um, dtype=np.float64).reshape(-1, 2)
        self.positions_um = (
            self.tile_xy_um.copy()
            if tile_centres_um is None
            else np.asarray(tile_centres_um, dtype=np.float64).reshape(-1, 2)
        )
        self.rebuilt = tile_centres_um is not None
        self.tile_shape_px = (int(tile_shape_px[0]), int(tile_shape_px[1]))
        if pixel_affine_um is None:
            if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
                raise ValueError(f"section {section_id}: pixel size must be positive, got {pixel_size_um!r}")
            self.pixel_affine_um = float(pixel_size_um) * np.eye(2)
        else:
            self.pixel_affine_um = validate_affine(pixel_affine_um)
        self.pixel_size_um = pixel_size_from_affine(self.pixel_affine_um)
        if not math.isclose(self.pixel_size_um, float(pixel_size_um), rel_tol=1e-6):
            logger.warning(
                "section %s: pixel size %s µm differs from the pixel affine's %s µm; using the affine",
                section_id,
                pixel_size_um,
                self.pixel_size_um,
            )
        self.n_channels = int(n_channels)
        self.tracer_channel = int(tracer_channel)
        self.anatomy_channel = int(anatomy_channel)
        self.attrs = dict(section_attrs or {})
        self.settings = settings or AnalysisSettings()
        self.segmentation = segmentation_settings(self.settings)
        self.calibration = calibration
        if flat_fields is None and calibration is not None:
            flat_fields = calibration.flat_fields
        self.flat_fields = list(flat_fields) if flat_fields is not None else [None] * self.n_channels
        if len(self.flat_fields) != self.n_channels:
            raise ValueError(f"{len(self.flat_fields)} flat fields for {self.n_channels} channels")
        n_c = self.n_channels
        self._cal = calibration or uncalibrated(n_c, self.settings.dark_offset_adu)
        self.dark_offsets_adu = tuple(float(v) for v in self._cal.dark_offsets_adu)
        if len(self.dark_offsets_adu) != n_c:
            raise ValueError(f"{len(self.dark_offsets_adu)} dark offsets for {n_c} channels")
        self.size_model = self._cal.size_model
        self.channel_names = tuple(str(c) for c in channel_names)
        self.read_tile = read_tile
        margin = _grid_margin_um(self.settings, self.rebuilt)
        self.mosaic = SectionMosaic(
            _grid_bbox_um(self.tile_xy_um, self.pixel_affine_um, self.tile_shape_px, margin),
            n_channels=self.n_channels,
            tile_pixel_size_um=self.pixel_size_um,
            mosaic_pixel_um=self.settings.mosaic_pixel_um,
            affine_um=self.pixel_affine_um,
        )
        self.accumulator = SectionAccumulator.for_mosaic(
            self.mosaic, tile_centres_um=self.positions_um, tile_shape=self.tile_shape_px
        )
        self.lattice = self.mosaic.lattice(self.tile_shape_px)
        self.tiles_added: list[int] = []
        self._warned_no_side = False
        self._added: set[int] = set()
        self._lock = threading.Lock()
        # registration: planned edge neighbours, measured pairs, raw anatomy strips awaiting a
        # neighbour, and every tile reduced (to rebuild at registered positions without a re-read)
        self.search_radius_px = 2.0 * self.settings.max_registration_correction_um / self.pixel_size_um
        self._strip_margin_px = math.ceil(self.search_radius_px) + 2
        self._partners: dict[int, list[int]] = {}
        if self.settings.register_tiles:
            for i, j in edge_neighbour_pairs(
                self.tile_xy_um, self.tile_shape_px, self.pixel_affine_um, overlap_min_px=_OVERLAP_MIN_PX
            ):
                self._partners.setdefault(int(i), []).append(int(j))
                self._partners.setdefault(int(j), []).append(int(i))
        self._pairs: dict[tuple[int, int], tuple[float, float, float, int]] = {}
        self._strips: dict[tuple[int, int], NDArray[Any]] = {}
        self._reduced: dict[int, ReducedTile] = {}
        # per-tile flags (analysis.calibration.tile_flags): -1 / NaN until a tile is analysed
        self.tile_flags = TileFlagTable(self.n_tiles, n_c)

    @classmethod
    def from_reader(
        cls,
        section: SectionReader,
        *,
        plan_yaml: str,
        settings: AnalysisSettings | None = None,
        flat_fields: Sequence[NDArray[np.float32] | None] | None = None,
        read_tile: TileReader | None = None,
        calibration: AppliedCalibration | None = None,
    ) -> SectionAnalysis:
        """Analysis state for a section of a scan file (geometry, pixel affine, channel roles, attributes)."""
        tracer, anatomy = channel_roles(plan_yaml, section.channel_names)
        attrs = section.attrs
        try:
            affine = affine_from_attr(attrs.get("pixel_affine_um"), section.pixel_size_um)
        except ValueError as e:
            raise ValueError(f"section {section.section_id}: {e}") from None
        return cls(
            section_id=section.section_id,
            tile_xy_um=section.tile_xy_um,
            tile_shape_px=section.tile_shape_px,
            pixel_size_um=section.pixel_size_um,
            n_channels=len(section.channel_names),
            tracer_channel=tracer,
            anatomy_channel=anatomy,
            section_attrs=attrs,
            settings=settings,
            flat_fields=flat_fields,
            channel_names=section.channel_names,
            read_tile=read_tile,
            pixel_affine_um=affine,
            calibration=calibration,
        )

    def _rebuilt_copy(self, positions_um: NDArray[np.float64]) -> SectionAnalysis:
        copy = SectionAnalysis(
            section_id=self.section_id,
            tile_xy_um=self.tile_xy_um,
            tile_shape_px=self.tile_shape_px,
            pixel_size_um=self.pixel_size_um,
            n_channels=self.n_channels,
            tracer_channel=self.tracer_channel,
            anatomy_channel=self.anatomy_channel,
            section_attrs=self.attrs,
            settings=self.settings.model_copy(update={"register_tiles": False}),
            flat_fields=self.flat_fields,
            channel_names=self.channel_names,
            read_tile=self.read_tile,
            tile_centres_um=positions_um,
            pixel_affine_um=self.pixel_affine_um,
            calibration=self.calibration,
        )
        with self._lock:
            copy.tile_flags.copy_from(self.tile_flags)
        return copy

    @property
    def n_tiles(self) -> int:
        """Planned tiles of the section."""
        return len(self.tile_xy_um)

    def parameters(self) -> dict[str, Any]:
        """JSON-serialisable parameters of this analysis (written with the results)."""
        return {
            "settings": self.settings.model_dump(mode="json"),
            "segmentation": dataclasses.asdict(self.segmentation),
            "dark_offset_adu": self.dark_offsets_adu[self.tracer_channel],
            "dark_offsets_adu": dict(zip(self.channel_names, self.dark_offsets_adu, strict=False)),
            "calibration": None if self.calibration is None else self.calibration.description,
            "flat_fielded_channels": [
                name for name, ff in zip(self.channel_names, self.flat_fields, strict=False) if ff is not None
            ],
            "tracer_channel": self.tracer_channel,
            "anatomy_channel": self.anatomy_channel,
            "mosaic_pixel_um": self.mosaic.pixel_size_um,
            "pixel_affine_um": self.pixel_affine_um.tolist(),
            "placement": f"{self.lattice.factor}-px blocks resampled bilinearly onto the stage grid",
            "bin_um": self.settings.heatmap_bin_um,
            "rc_bin_um": self.settings.rc_bin_um,
            "z_projection": "max",
            "tile_position": "registered" if self.rebuilt else "planned",
            "n_tiles": self.n_tiles,
        }

    def memory_bytes(self) -> int:
        """Memory held by this section's state now (grids, reduced tiles, waiting strips), bytes."""
        with self._lock:
            grids = self.mosaic._sum.nbytes + self.mosaic._weight.nbytes
            acc = self.accumulator
            grids += acc.imaged_px.nbytes + acc.axon_px.nbytes + acc.tracer_sum.nbytes
            reduced = sum(r.nbytes for r in self._reduced.values())
            strips = sum(s.nbytes for s in self._strips.values())
        return int(grids + reduced + strips)

    # ---------------------------------------------------------------- tiles

    def _corrected(
        self, raw: NDArray[Any], channel: int, region: tuple[slice, slice] | None = None
    ) -> NDArray[np.float32]:
        flat = self.flat_fields[channel]
        if flat is not None and region is not None:
            flat = flat[region]
        return correct_tile(raw, dark_offset_adu=self.dark_offsets_adu[channel], flat_field=flat)

    def _projected(self, images: ArrayLike, tile_index: int) -> NDArray[Any]:
        raw = np.asarray(images)
        if raw.ndim == 4:
            raw = raw[:, 0] if raw.shape[1] == 1 else raw.max(axis=1)
        if raw.ndim != 3 or raw.shape[0] != self.n_channels or raw.shape[1:] != self.tile_shape_px:
            raise ValueError(
                f"tile {self.section_id}/{tile_index}: expected ({self.n_channels}, Z, "
                f"{self.tile_shape_px[0]}, {self.tile_shape_px[1]}) images, got {np.shape(images)}"
            )
        return raw

    def reduce(
        self, raw: NDArray[Any], tracer_corrected: NDArray[np.float32], axon_mask: NDArray[np.bool_]
    ) -> ReducedTile:
        """Reduce one tile to its blocks (:class:`ReducedTile`).

        Parameters
        ----------
        raw : (C, H, W) array
            Raw tile (ADU), planes already projected.
        tracer_corrected : (H, W) float32
            The corrected tracer channel (already computed for segmentation); used only
            with a flat field (otherwise the raw tile, half the bytes, gives the same means).
        axon_mask : (H, W) bool
        """
        lat = self.lattice
        means = np.empty((self.n_channels, *lat.n_blocks), dtype=np.float32)
        for c in range(self.n_channels):
            if c == self.tracer_channel and self.flat_fields[c] is not None:
                means[c] = lat.block_means(tracer_corrected)
            elif self.flat_fields[c] is None:
                # block means of the raw values minus the offset: the mean of the corrected values
                means[c] = lat.block_means(raw[c])
                means[c] -= np.float32(self.dark_offsets_adu[c])
            else:
                means[c] = lat.block_means(self._corrected(raw[c], c))
        return ReducedTile(means, lat.block_counts(axon_mask))

    def _placed(
        self, reduced: ReducedTile, tile_index: int
    ) -> tuple[MosaicContribution | None, AccumulatorContribution | None]:
        center = self.positions_um[tile_index]
        on = self.mosaic.placement(self.tile_shape_px, (float(center[0]), float(center[1])))
        if on.empty:
            return None, None
        stack = np.empty((self.n_channels + 1, *self.lattice.n_blocks), dtype=np.float32)
        stack[: self.n_channels] = reduced.means
        np.multiply(reduced.axon_counts, np.float32(1.0 / self.lattice.factor**2), out=stack[self.n_channels])
        values = on.resample(stack)
        mosaic = self.mosaic.contribution(on, values[: self.n_channels])
        acc = self.accumulator.contribution(
            on,
            tracer_mean=values[self.tracer_channel],
            axon_fraction=values[self.n_channels],
            tile_index=tile_index,
        )
        return mosaic, acc

    def _check_new(self, tile_index: int) -> int:
        t = int(tile_index)
        if not 0 <= t < self.n_tiles:
            raise ValueError(f"tile {self.section_id}/{t}: index outside 0..{self.n_tiles - 1}")
        if t in self._added:
            raise ValueError(f"tile {self.section_id}/{t} was already added")
        return t

    def add_tile(self, images: ArrayLike, *, tile_index: int) -> None:
        """Correct, segment, reduce, place and register one tile.

        Parameters
        ----------
        images : (C, Z, H, W) or (C, H, W) array
            Raw tile (ADU); several planes are max-projected.
        tile_index : int
            Index of the tile in the section.
        """
        t = self._check_new(tile_index)
        raw = self._projected(images, t)
        tracer = self._corrected(raw[self.tracer_channel], self.tracer_channel)
        axons = segment_axons(
            tracer, pixel_size_um=self.pixel_size_um, settings=self.segmentation, size_model=self.size_model
        )
        reduced = self.reduce(raw, tracer, axons.mask)
        self._flag(t, raw, reduced)
        pairs = self._measure_pairs(t, raw[self.anatomy_channel]) if self.settings.register_tiles else {}
        self._add_reduced(t, reduced, pairs)

    def _flag(self, t: int, raw: NDArray[Any], reduced: ReducedTile) -> None:
        """Per-channel flags of a tile from its block means (dark offset) and its pixels (saturation)."""
        flags = flags_of_reduced_tile(reduced.means, raw, self._cal, block_px=self.lattice.factor)
        with self._lock:
            self.tile_flags.set_tile(t, flags)

    def tile_flag_arrays(self) -> TileFlagArrays:
        """The per-tile flags so far (copies)."""
        with self._lock:
            return self.tile_flags.arrays(
                self.channel_names, self._cal.bit_depths or (None,) * self.n_channels
            )

    def _add_reduced(
        self, t: int, reduced: ReducedTile, pairs: Mapping[tuple[int, int], tuple[float, float, float, int]]
    ) -> None:
        mosaic, acc = self._placed(reduced, t)
        with self._lock:
            self.mosaic.add(mosaic)
            self.accumulator.add(acc)
            self.accumulator.n_tiles_added += 1
            self.tiles_added.append(t)
            self._added.add(t)
            self._pairs.update(pairs)
            if self.settings.register_tiles:
                self._reduced[t] = reduced

    # ---------------------------------------------------------- registration

    def _pair_geometry(
        self, i: int, k: int
    ) -> tuple[NDArray[np.float64], tuple[slice, slice], tuple[slice, slice]]:
        """Planned pixel-frame offset of k from i, and the strip regions of i and k (i < k)."""
        d = stage_offset_to_px(self.tile_xy_um[k] - self.tile_xy_um[i], self.pixel_affine_um)
        region_i, region_k = overlap_regions(d, self.tile_shape_px, margin_px=self._strip_margin_px)
        return d, region_i, region_k

    def _strip(self, owner: int, partner: int, anatomy_raw: NDArray[Any]) -> NDArray[Any]:
        i, k = min(owner, partner), max(owner, partner)
        _, region_i, region_k = self._pair_geometry(i, k)
        return anatomy_raw[region_i if owner == i else region_k]

    def _strip_from_file(self, owner: int, partner: int) -> NDArray[Any] | None:
        if self.read_tile is None:
            return None
        tile = self.read_tile(owner)
        if tile is None:
            return None
        return np.array(self._strip(owner, partner, self._projected(tile, owner)[self.anatomy_channel]))

    def _measure(
        self, i: int, k: int, strip_i: NDArray[Any], strip_k: NDArray[Any]
    ) -> tuple[float, float, float, int]:
        d, region_i, region_k = self._pair_geometry(i, k)
        a, b = strip_i, strip_k
        if self.flat_fields[self.anatomy_channel] is not None:
            # without a flat field correction is an offset, to which the NCC is blind
            a = self._corrected(strip_i, self.anatomy_channel, region_i)
            b = self._corrected(strip_k, self.anatomy_channel, region_k)
        e = d + np.array([region_k[1].start - region_i[1].start, region_k[0].start - region_i[0].start])
        ps = measure_strip_shift(a, b, e, max_shift_px=self.search_radius_px)
        if ps is None:
            return (math.nan, math.nan, math.nan, 0)
        return (float(ps.shift_px[0]), float(ps.shift_px[1]), ps.ncc, ps.n_px)

    def _measure_pairs(
        self, t: int, anatomy_raw: NDArray[Any]
    ) -> dict[tuple[int, int], tuple[float, float, float, int]]:
        """Measure tile ``t`` against every analysed edge neighbour; keep its strips for the others."""
        out: dict[tuple[int, int], tuple[float, float, float, int]] = {}
        for j in self._partners.get(t, []):
            with self._lock:
                done = j in self._added
                other = self._strips.pop((j, t), None) if done else None
            if not done:
                # copied: the strip must outlive the caller's buffer
                strip = np.array(self._strip(t, j, anatomy_raw))
                with self._lock:
                    self._strips[(t, j)] = strip
                continue
            if other is None:
                other = self._strip_from_file(j, t)
            if other is None:
                continue
            mine = self._strip(t, j, anatomy_raw)
            i, k = min(t, j), max(t, j)
            out[(i, k)] = self._measure(i, k, *((other, mine) if j < t else (mine, other)))
        return out

    def registration(self) -> Registration | None:
        """Tile positions solved from the pairs measured so far (None with registration off)."""
        if not self.settings.register_tiles:
            return None
        with self._lock:
            keys = sorted(self._pairs)
            values = [self._pairs[k] for k in keys]
        pairs = np.array(keys, dtype=np.int64).reshape(-1, 2)
        vals = np.array(values, dtype=np.float64).reshape(-1, 4)
        reg = registration_from_pairs(
            self.tile_xy_um,
            pairs,
            vals[:, :2],
            vals[:, 2],
            vals[:, 3],
            affine_um=self.pixel_affine_um,
        )
        # tiles that moved implausibly far, or were never measured, stay where planned
        far = np.hypot(*reg.correction_um.T) > self.settings.max_registration_correction_um
        if far.any():
            corr = np.where(far[:, None], 0.0, reg.correction_um)
            reg = dataclasses.replace(reg, positions_um=self.tile_xy_um + corr, correction_um=corr)
        return reg

    # --------------------------------------------------------------- results

    def _injection_side(self) -> Literal["left", "right"] | None:
        """The section's injection side; None (said once) when the plan does not know it."""
        value = self.attrs.get("injection_side")
        if value in ("left", "right"):
            return value  # type: ignore[no-any-return]
        if not self._warned_no_side:
            self._warned_no_side = True
            logger.warning(
                "section %s: injection side not given: no rubrospinal territory (the tract's side is "
                "unknown); set injection_side in the plan, or draw the territory",
                self.section_id,
            )
        return None

    def regions(self) -> SectionRegions:
        """Region masks from the anatomy mosaic of the tiles added so far (≈ 0.3 s for a Th7 section).

        Raises
        ------
        ValueError
            If the mosaic shows no tissue yet (e.g. only glass tiles were added).
        """
        with self._lock:
            anatomy = self.mosaic.image(self.anatomy_channel)
        a = self.attrs
        epicenter = a.get("lesion_epicenter_um")
        return section_regions(
            anatomy,
            origin_um=self.mosaic.origin_um,
            pixel_size_um=self.mosaic.pixel_size_um,
            orientation=a.get("orientation") or "coronal",
            injection_side=self._injection_side(),
            rostral_direction_deg=float(a.get("rostral_direction_deg") or 180.0),
            epicenter_um=None if epicenter is None else (float(epicenter[0]), float(epicenter[1])),
            bin_length_um=self.settings.rc_bin_um,
            user_polygons_um=a.get("region_polygons_um") or None,
        )

    def table(self, regions: SectionRegions) -> list[RegionRow]:
        """Region table of the tiles added so far, on the given region masks (cheap: ≈ 10 ms)."""
        with self._lock:
            return region_table(self.accumulator, regions.masks)

    def final(self) -> tuple[SectionAnalysis, Registration | None]:
        """The section to report: itself, or its rebuild at registered positions (stage off by > 1 px).

        The rebuild places the kept reduced tiles again (no tile is read or
        segmented again): about 2 ms per 2048² tile.
        """
        reg = self.registration()
        if reg is None or self.rebuilt:
            return self, reg
        moved_px = np.hypot(*reg.correction_um.T) / self.pixel_size_um
        if not moved_px.size or moved_px.max() <= _REBUILD_CORRECTION_PX:
            return self, reg
        logger.info(
            "section %s: tiles moved by up to %.1f px on registration; placing them at registered positions",
            self.section_id,
            float(moved_px.max()),
        )
        rebuilt = self._rebuilt_copy(reg.positions_um)
        with self._lock:
            added = sorted(self._added)
            reduced = dict(self._reduced)
        for t in added:
            r = reduced.get(t)
            if r is not None:
                rebuilt._add_reduced(t, r, {})
                continue
            tile = None if self.read_tile is None else self.read_tile(t)
            if tile is not None:  # not kept (cannot happen with registration on): analysed again
                rebuilt.add_tile(tile, tile_index=t)
        return rebuilt, reg

    def results(self, *, final: bool = True) -> SectionResults:
        """Regions, region table and heatmaps of what was added so far.

        With ``final`` (the default), registration is solved and the section
        placed again at the registered positions if a tile moved by more than a
        pixel; without, the live state as it is (no registration).
        """
        section, reg = self.final() if final else (self, None)
        regions = section.regions()
        with section._lock:
            n = len(section.tiles_added)
            table = region_table(section.accumulator, regions.masks)
            maps = heatmaps(
                section.accumulator, bin_um=self.settings.heatmap_bin_um, tissue_mask=regions.masks["section"]
            )
        # regions given as plan polygons are drawn, as their records in the file say
        drawn = set(regions.user_regions)
        table = [dataclasses.replace(r, kind="drawn") if r.region in drawn else r for r in table]
        return SectionResults(self.section_id, regions, table, maps, n, reg, section is not self, section)

    def write(self, h5_group: h5py.Group, results: SectionResults) -> None:
        """Write ``results`` into a section's ``analysis`` group (open for writing)."""
        section = results.source or self
        reg = results.registration
        positions = np.full((self.n_tiles, 2), np.nan)
        if reg is not None:
            done = np.zeros(self.n_tiles, dtype=bool)
            done[list(self._added)] = True
            positions[done] = reg.positions_um[done]
        names = list(results.regions.masks)
        plan_polygons = {k: v for k, v in (self.attrs.get("region_polygons_um") or {}).items() if k in names}
        flags = section.tile_flag_arrays()
        # held while writing: the sums must not change under the writer (add_tile takes the lock)
        with section._lock:
            write_analysis(
                h5_group,
                maps=results.maps,
                masks=results.regions.masks,
                table=results.table,
                parameters={
                    **section.parameters(),
                    "n_tiles_analysed": results.n_tiles_analysed,
                    "registration": results.registration is not None,
                },
                accumulator=section.accumulator,
                mosaic=np.stack([section.mosaic.image(c) for c in range(self.n_channels)]),
                mosaic_origin_um=section.mosaic.origin_um,
                mosaic_pixel_um=section.mosaic.pixel_size_um,
                channel_names=self.channel_names,
                regions=analysis_records(names, plan_polygons_um=plan_polygons),
                regions_json=regions_to_json(results.regions),
                registration=reg,
                registered_tile_xy_um=positions,
                tile_flags=flags,
            )

    def snapshot(self, regions: SectionRegions | None = None) -> LiveSnapshot:
        """A consistent copy of the section's state now, safe to use from another thread.

        Parameters
        ----------
        regions : SectionRegions, optional
            Region masks to compute the table and the tissue-restricted heatmap
            on; without them the table is empty and the heatmap counts every
            imaged cell.
        """
        with self._lock:
            anatomy = self.mosaic.image(self.anatomy_channel)
            tracer = self.mosaic.image(self.tracer_channel)
            tissue = None if regions is None else regions.masks.get("section")
            maps = heatmaps(self.accumulator, bin_um=self.settings.heatmap_bin_um, tissue_mask=tissue)
            table = [] if regions is None else region_table(self.accumulator, regions.masks)
            n = len(self.tiles_added)
        return LiveSnapshot(
            section_id=self.section_id,
            anatomy_mosaic=anatomy,
            tracer_mosaic=tracer,
            mosaic_origin_um=self.mosaic.origin_um.copy(),
            mosaic_pixel_um=self.mosaic.pixel_size_um,
            maps=maps,
            regions=regions,
            table=table,
            n_tiles_analysed=n,
            n_tiles=self.n_tiles,
        )

    # ----------------------------------------------------------------- state

    def save_state(self, group: h5py.Group) -> None:
        """Write the running state (sums, mosaic, tiles added, pairs, reduced tiles) into an empty HDF5 group.

        The raw strips of tiles waiting for a neighbour are not written: after
        :meth:`load_state` such a pair is measured from the file (``read_tile``).
        """
        with self._lock:
            acc, mos = self.accumulator, self.mosaic
            for name in ("imaged_px", "axon_px", "tracer_sum"):
                group.create_dataset(f"acc_{name}", data=getattr(acc, name))
            group.create_dataset("mosaic_sum", data=mos._sum)
            group.create_dataset("mosaic_weight", data=mos._weight)
            group.create_dataset("tiles_added", data=np.asarray(self.tiles_added, dtype=np.int64))
            keys = sorted(self._pairs)
            group.create_dataset("pairs", data=np.asarray(keys, dtype=np.int64).reshape(-1, 2))
            values = np.asarray([self._pairs[k] for k in keys], dtype=np.float64).reshape(-1, 4)
            group.create_dataset("pair_values", data=values)
            group.attrs["n_tiles_added"] = acc.n_tiles_added
            kept = sorted(self._reduced)
            nh, nw = self.lattice.n_blocks
            group.create_dataset("reduced_tiles", data=np.asarray(kept, dtype=np.int64))
            means = group.create_dataset(
                "reduced_means", shape=(len(kept), self.n_channels, nh, nw), dtype=np.float32
            )
            counts = group.create_dataset("reduced_axon_counts", shape=(len(kept), nh, nw), dtype=np.uint16)
            for n, t in enumerate(kept):
                means[n] = self._reduced[t].means
                counts[n] = self._reduced[t].axon_counts
            self.tile_flags.save(group)

    def load_state(self, group: h5py.Group) -> None:
        """Restore the state written by :meth:`save_state` into this (freshly made) section."""
        with self._lock:
            acc, mos = self.accumulator, self.mosaic
            for name in ("imaged_px", "axon_px", "tracer_sum"):
                getattr(acc, name)[...] = group[f"acc_{name}"][()]
            mos._sum[...] = group["mosaic_sum"][()]
            mos._weight[...] = group["mosaic_weight"][()]
            acc.n_tiles_added = int(group.attrs["n_tiles_added"])
            self.tiles_added = [int(t) for t in group["tiles_added"][()]]
            self._added = set(self.tiles_added)
            pairs = group["pairs"][()]
            values = group["pair_values"][()]
            self._pairs = {
                (int(i), int(j)): (float(v[0]), float(v[1]), float(v[2]), int(v[3]))
                for (i, j), v in zip(pairs, values, strict=True)
            }
            self._strips.clear()
            self._reduced = {}
            if "reduced_tiles" in group:
                means, counts = group["reduced_means"], group["reduced_axon_counts"]
                for n, t in enumerate(group["reduced_tiles"][()]):
                    self._reduced[int(t)] = ReducedTile(means[n], counts[n])
            self.tile_flags.load(group)


def saved_snapshot(group: h5py.Group, section_id: str) -> LiveSnapshot:
    """Snapshot of a section from an ``analysis`` group written by :meth:`SectionAnalysis.write`."""
    saved = read_analysis(group)
    return snapshot_from_saved(section_id, saved, saved.regions_json)
