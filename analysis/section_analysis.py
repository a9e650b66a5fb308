"""One section's analysis, fed tile by tile: mosaic, regional sums, registration; results and state.

:class:`SectionAnalysis` is the unit both the live worker and the offline
rerun use. Per tile (:meth:`SectionAnalysis.add_tile`): dark/flat
correction of every channel, axon segmentation of the tracer channel at full
resolution, placement of the corrected channels into the reduced mosaic and
of the axon mask and tracer signal into the overlap-safe per-cell sums
(:class:`~analysis.maps.SectionAccumulator`), and, with registration on, the
measurement of the tile's offset to each already analysed neighbour by
phase correlation of their overlap (:func:`~analysis.mosaic.measure_pair_shift`).

Determinism
-----------
Every per-tile contribution is rounded to a dyadic grid before it is added
(mosaic and sums), and each neighbour pair is measured once from the two
tiles' pixels alone, so the state after a set of tiles does not depend on
the order they arrived in: live and offline results are identical.

Registration
------------
Tiles are placed at their planned positions as they arrive. At
:meth:`SectionAnalysis.results` the measured pairs are solved for the tile
positions (least squares, zero mean correction, outliers dropped). If some
tile moves by more than one tile pixel (an inaccurate stage), the section
is rebuilt once from the file with every tile at its registered position
(mosaic, region masks and sums alike); otherwise the planned positions
stand (they are then within a pixel). Positions and pair measurements
are written with the results.

State
-----
:meth:`SectionAnalysis.save_state` / :meth:`SectionAnalysis.load_state`
move a section's state to an HDF5 group and back, so the live worker keeps
only the sections being scanned in memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import h5py
import numpy as np
import yaml
from numpy.typing import ArrayLike, NDArray

from acquisition.storage import SectionReader
from analysis.maps import Heatmaps, RegionRow, SectionAccumulator, heatmaps, region_table
from analysis.mosaic import Registration, SectionMosaic, measure_pair_shift, registration_from_pairs
from analysis.region_edits import analysis_records
from analysis.regions import SectionAxes, SectionRegions, section_regions
from analysis.results_format import SavedAnalysis, read_analysis, write_analysis
from analysis.settings import AnalysisSettings, segmentation_settings
from analysis.tile import correct_tile, segment_axons

__all__ = [
    "LiveSnapshot",
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

# dyadic grids that make per-cell sums exact (see the module docstring)
_PX_QUANTUM = 2.0**-24
_SIGNAL_QUANTUM = 2.0**-16

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


def _quantised(a: NDArray[np.float64], quantum: float) -> NDArray[np.float64]:
    return np.round(a / quantum) * quantum


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
        Tile pixel size (µm).
    n_channels : int
    tracer_channel, anatomy_channel : int
        Channel indices.
    section_attrs : mapping
        Section attributes (``SectionReader.attrs``): ``orientation``, ``injection_side``,
        ``rostral_direction_deg``, ``lesion_epicenter_um``, ``region_polygons_um``.
    settings : AnalysisSettings
    flat_fields : sequence of (H, W) float32 or None, per channel, optional
        Normalised flat fields (:func:`analysis.settings.load_flat_fields`).
    channel_names : sequence of str
        Channel (preset) names, in tile order.
    read_tile : callable, optional
        ``read_tile(index)`` → the raw tile from the scan file (or None if not done). Used
        to measure a pair whose first tile is no longer cached, and to rebuild at
        registered positions; without it those pairs are not measured and no rebuild happens.
    tile_centres_um : (n_tiles, 2) array, optional
        Positions to place tiles at (default ``tile_xy_um``); set when rebuilding.
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
        self.pixel_size_um = float(pixel_size_um)
        self.n_channels = int(n_channels)
        self.tracer_channel = int(tracer_channel)
        self.anatomy_channel = int(anatomy_channel)
        self.attrs = dict(section_attrs or {})
        self.settings = settings or AnalysisSettings()
        self.segmentation = segmentation_settings(self.settings)
        self.flat_fields = list(flat_fields) if flat_fields is not None else [None] * self.n_channels
        if len(self.flat_fields) != self.n_channels:
            raise ValueError(f"{len(self.flat_fields)} flat fields for {self.n_channels} channels")
        self.channel_names = tuple(str(c) for c in channel_names)
        self.read_tile = read_tile
        h, w = self.tile_shape_px
        half = np.array([w, h], dtype=np.float64) * self.pixel_size_um / 2
        # the grid covers the planned footprint plus the largest trusted registration correction
        margin = self.settings.max_registration_correction_um if self.settings.register_tiles else 0.0
        lo = self.tile_xy_um.min(axis=0) - half - margin
        hi = self.tile_xy_um.max(axis=0) + half + margin
        self.mosaic = SectionMosaic(
            (lo[0], lo[1], hi[0], hi[1]),
            n_channels=self.n_channels,
            tile_pixel_size_um=self.pixel_size_um,
            mosaic_pixel_um=self.settings.mosaic_pixel_um,
        )
        self.accumulator = SectionAccumulator.for_mosaic(
            self.mosaic, tile_centres_um=self.positions_um, tile_shape=self.tile_shape_px
        )
        self.tiles_added: list[int] = []
        self._added: set[int] = set()
        self._lock = threading.Lock()
        # registration: planned neighbours, measured pairs, raw anatomy of tiles awaiting neighbours
        self._neighbours = self._planned_neighbours() if self.settings.register_tiles else {}
        self._pairs: dict[tuple[int, int], tuple[float, float, float, int]] = {}
        self._anatomy_cache: dict[int, NDArray[Any]] = {}

    @classmethod
    def from_reader(
        cls,
        section: SectionReader,
        *,
        plan_yaml: str,
        settings: AnalysisSettings | None = None,
        flat_fields: Sequence[NDArray[np.float32] | None] | None = None,
        read_tile: TileReader | None = None,
    ) -> SectionAnalysis:
        """Analysis state for a section of a scan file (geometry, channel roles, attributes)."""
        tracer, anatomy = channel_roles(plan_yaml, section.channel_names)
        return cls(
            section_id=section.section_id,
            tile_xy_um=section.tile_xy_um,
            tile_shape_px=section.tile_shape_px,
            pixel_size_um=section.pixel_size_um,
            n_channels=len(section.channel_names),
            tracer_channel=tracer,
            anatomy_channel=anatomy,
            section_attrs=section.attrs,
            settings=settings,
            flat_fields=flat_fields,
            channel_names=section.channel_names,
            read_tile=read_tile,
        )

    def _rebuilt_copy(self, positions_um: NDArray[np.float64]) -> SectionAnalysis:
        return SectionAnalysis(
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
        )

    @property
    def n_tiles(self) -> int:
        """Planned tiles of the section."""
        return len(self.tile_xy_um)

    def parameters(self) -> dict[str, Any]:
        """JSON-serialisable parameters of this analysis (written with the results)."""
        return {
            "settings": self.settings.model_dump(mode="json"),
            "segmentation": dataclasses.asdict(self.segmentation),
            "dark_offset_adu": self.settings.dark_offset_adu,
            "flat_fielded_channels": [
                name for name, ff in zip(self.channel_names, self.flat_fields, strict=False) if ff is not None
            ],
            "tracer_channel": self.tracer_channel,
            "anatomy_channel": self.anatomy_channel,
            "mosaic_pixel_um": self.mosaic.pixel_size_um,
            "bin_um": self.settings.heatmap_bin_um,
            "rc_bin_um": self.settings.rc_bin_um,
            "z_projection": "max",
            "tile_position": "registered" if self.rebuilt else "planned",
            "n_tiles": self.n_tiles,
        }

    # ---------------------------------------------------------------- tiles

    def _corrected(self, raw: NDArray[Any], channel: int) -> NDArray[np.float32]:
        return correct_tile(
            raw, dark_offset_adu=self.settings.dark_offset_adu, flat_field=self.flat_fields[channel]
        )

    def _projected(self, images: ArrayLike, tile_index: int) -> NDArray[Any]:
        raw = np.asarray(images)
        if raw.ndim == 4:
            raw = raw.max(axis=1)
        if raw.ndim != 3 or raw.shape[0] != self.n_channels or raw.shape[1:] != self.tile_shape_px:
            raise ValueError(
                f"tile {self.section_id}/{tile_index}: expected ({self.n_channels}, Z, "
                f"{self.tile_shape_px[0]}, {self.tile_shape_px[1]}) images, got {np.shape(images)}"
            )
        return raw

    def add_tile(self, images: ArrayLike, *, tile_index: int) -> None:
        """Correct, segment, place and register one tile.

        Parameters
        ----------
        images : (C, Z, H, W) or (C, H, W) array
            Raw tile (ADU); several planes are max-projected.
        tile_index : int
            Index of the tile in the section.
        """
        t = int(tile_index)
        if not 0 <= t < self.n_tiles:
            raise ValueError(f"tile {self.section_id}/{t}: index outside 0..{self.n_tiles - 1}")
        if t in self._added:
            raise ValueError(f"tile {self.section_id}/{t} was already added")
        raw = self._projected(images, t)
        corrected = np.empty(raw.shape, dtype=np.float32)
        for c in range(self.n_channels):
            corrected[c] = self._corrected(raw[c], c)
        tracer = corrected[self.tracer_channel]
        axons = segment_axons(tracer, pixel_size_um=self.pixel_size_um, settings=self.segmentation)
        cx, cy = self.positions_um[t]
        center = (float(cx), float(cy))
        pairs = self._measure_pairs(t, raw[self.anatomy_channel]) if self.settings.register_tiles else {}
        contribution = self.accumulator.tile_contribution(axons.mask, tracer, center_um=center, tile_index=t)
        with self._lock:
            self.mosaic.add_tile(corrected, center_um=center, pixel_size_um=self.pixel_size_um)
            if contribution is not None:
                at, imaged, axon, signal = contribution
                acc = self.accumulator
                acc.imaged_px[at] += _quantised(imaged, _PX_QUANTUM)
                acc.axon_px[at] += _quantised(axon, _PX_QUANTUM)
                acc.tracer_sum[at] += _quantised(signal, _SIGNAL_QUANTUM)
            self.accumulator.n_tiles_added += 1
            self.tiles_added.append(t)
            self._added.add(t)
            self._pairs.update(pairs)

    # ---------------------------------------------------------- registration

    def _planned_neighbours(self) -> dict[int, list[int]]:
        h, w = self.tile_shape_px
        d = np.abs(self.tile_xy_um[:, None, :] - self.tile_xy_um[None, :, :]) / self.pixel_size_um
        ok = (w - d[..., 0] >= _OVERLAP_MIN_PX) & (h - d[..., 1] >= _OVERLAP_MIN_PX)
        # edge neighbours only: a corner overlap is small, weak and as costly to measure
        ok &= (d[..., 0] < w / 2) | (d[..., 1] < h / 2)
        np.fill_diagonal(ok, False)
        return {i: [int(j) for j in np.flatnonzero(ok[i])] for i in range(self.n_tiles)}

    def _anatomy_of(self, tile_index: int) -> NDArray[Any] | None:
        cached = self._anatomy_cache.get(tile_index)
        if cached is not None:
            return cached
        if self.read_tile is None:
            return None
        tile = self.read_tile(tile_index)
        if tile is None:
            return None
        return self._projected(tile, tile_index)[self.anatomy_channel]

    def _measure_pairs(
        self, t: int, anatomy_raw: NDArray[Any]
    ) -> dict[tuple[int, int], tuple[float, float, float, int]]:
        """Measure tile ``t`` against every analysed neighbour; cache its anatomy while needed."""
        out: dict[tuple[int, int], tuple[float, float, float, int]] = {}
        me = self._corrected(anatomy_raw, self.anatomy_channel)
        for j in self._neighbours.get(t, []):
            if j not in self._added:
                continue
            other_raw = self._anatomy_of(j)
            if other_raw is None:
                continue
            other = self._corrected(other_raw, self.anatomy_channel)
            i, k = min(t, j), max(t, j)
            a, b = (other, me) if j < t else (me, other)
            d_um = self.tile_xy_um[k] - self.tile_xy_um[i]
            ps = measure_pair_shift(a, b, (float(d_um[0]), float(d_um[1])), pixel_size_um=self.pixel_size_um)
            if ps is None:
                out[(i, k)] = (np.nan, np.nan, np.nan, 0)
            else:
                shift = ps.offset_um / self.pixel_size_um - d_um / self.pixel_size_um
                out[(i, k)] = (float(shift[0]), float(shift[1]), ps.ncc, ps.n_px)
        with self._lock:
            waiting = [j for j in self._neighbours.get(t, []) if j not in self._added]
            if waiting:
                self._anatomy_cache[t] = np.array(anatomy_raw, copy=True)
            for j in self._neighbours.get(t, []):
                if j in self._anatomy_cache and all(
                    k in self._added or k == t for k in self._neighbours.get(j, [])
                ):
                    del self._anatomy_cache[j]
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
            pixel_size_um=self.pixel_size_um,
        )
        # tiles that moved implausibly far, or were never measured, stay where planned
        far = np.hypot(*reg.correction_um.T) > self.settings.max_registration_correction_um
        if far.any():
            corr = np.where(far[:, None], 0.0, reg.correction_um)
            reg = dataclasses.replace(reg, positions_um=self.tile_xy_um + corr, correction_um=corr)
        return reg

    # --------------------------------------------------------------- results

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
            injection_side=a.get("injection_side") or "left",
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
        """The section to report: itself, or its rebuild at registered positions (stage off by > 1 px)."""
        reg = self.registration()
        if reg is None or self.rebuilt or self.read_tile is None:
            return self, reg
        moved_px = np.hypot(*reg.correction_um.T) / self.pixel_size_um
        if not moved_px.size or moved_px.max() <= _REBUILD_CORRECTION_PX:
            return self, reg
        logger.info(
            "section %s: tiles moved by up to %.1f px on registration; rebuilding at registered positions",
            self.section_id,
            float(moved_px.max()),
        )
        rebuilt = self._rebuilt_copy(reg.positions_um)
        for t in sorted(self._added):
            tile = self.read_tile(t)
            if tile is not None:
                rebuilt.add_tile(tile, tile_index=t)
        return rebuilt, reg

    def results(self, *, final: bool = True) -> SectionResults:
        """Regions, region table and heatmaps of what was added so far.

        With ``final`` (the default), registration is solved and the section
        rebuilt at the registered positions if a tile moved by more than a
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
        """Write the running state (sums, mosaic, tiles added, pairs) into an empty HDF5 group."""
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
            self._anatomy_cache.clear()


def saved_snapshot(group: h5py.Group, section_id: str) -> LiveSnapshot:
    """Snapshot of a section from an ``analysis`` group written by :meth:`SectionAnalysis.write`."""
    saved = read_analysis(group)
    return snapshot_from_saved(section_id, saved, saved.regions_json)
