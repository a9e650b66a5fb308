"""Writing a scan file: the layout of each section, and :class:`ScanWriter`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np

from .calibration import (
    DarkFrames,
    copy_calibration_parts,
    dark_frame_channels,
    require_calibration_group,
    write_dark_frames,
)
from .format import (
    _LAYOUT_ATTRS,
    _PASS_COMPLETE_ATTR,
    _SECTION_DATASETS,
    _STR,
    _WRITER_CACHE,
    FORMAT_NAME,
    FORMAT_VERSION,
    FREE_SPACE_RESERVE_BYTES,
    NO_CRC,
    PASSES_GROUP,
    TILE_CRC_DATASET,
    EventKind,
    StorageError,
    TileStatus,
    _check_format,
    _check_structure,
    _first_line,
    _free_bytes,
    _now_iso,
    _open_h5,
    _planned_z,
    _software_versions,
    _tile_groups,
    _to_json,
    exclusive_lock,
    image_crc32,
    in_use,
    pass_key,
    split_pass_key,
)
from .repair import _read_strings, _recover, _repair_file_ends, describe_repairs

logger = logging.getLogger(__name__)


def _scratch_fd() -> int:
    """Open a descriptor to an anonymous scratch file (in memory where possible)."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("cordscope-scan-detached")
    fd, name = tempfile.mkstemp(prefix="cordscope-scan-detached-")
    os.unlink(name)
    return fd


# ------------------------------------------------------------------------ layout


@dataclass(frozen=True, eq=False)
class SectionLayout:
    """What the scan file needs to know about one section before tiling it.

    Parameters
    ----------
    section_id : str
        Unique name of the section, used as its HDF5 group name (no ``/``).
    tile_xy_um : np.ndarray
        Planned stage position of each tile's centre, shape ``(n_tiles, 2)`` (µm).
    channel_names : tuple of str
        Channels in acquisition order, e.g. ``("DAPI", "tdTomato")``.
    n_z : int
        Focal planes per tile and channel.
    tile_shape_px : (int, int)
        Image shape ``(H, W)`` in pixels.
    pixel_size_um : float
        Image pixel size on the slide (µm).
    tile_size_um : (float, float)
        Tile field of view ``(width, height)`` on the slide (µm).
    attrs : Mapping[str, Any]
        Section description: ``animal``, ``group``, ``level``, ``orientation``,
        ``injection_side``, ``polygon_um`` (``(n, 2)`` outline in stage µm),
        ``lesion_epicenter_um``, and any extra key. ``None`` values are not
        stored (readers report them as ``None``); strings and numbers are
        stored as HDF5 attributes, anything else as JSON text.
    planned_tile_z_um : np.ndarray, optional
        Focus planned for each tile, shape ``(n_tiles,)`` (µm; NaN: none),
        e.g. from a focus map measured at the start, so that a resumed scan
        images its pending tiles at the same focus. Default: all NaN.
    pixel_affine_um : (2, 2) array, optional
        Stage µm per pixel step along the image's columns (column 0) and rows
        (column 1), Micro-Manager's pixel-size affine with binning applied
        (:func:`acquisition.roles.pixel_affine_um`). Default: ``pixel_size_um``
        times the identity (a camera aligned with the stage).
    """

    section_id: str
    tile_xy_um: np.ndarray
    channel_names: tuple[str, ...]
    n_z: int
    tile_shape_px: tuple[int, int]
    pixel_size_um: float
    tile_size_um: tuple[float, float]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    planned_tile_z_um: np.ndarray | None = None
    pixel_affine_um: np.ndarray | None = None

    def __post_init__(self) -> None:
        sid = self.section_id
        if not isinstance(sid, str) or not sid or "/" in sid or sid in {".", ".."}:
            raise ValueError(f"section id must be a non-empty name without '/', got {sid!r}")
        xy = np.array(self.tile_xy_um, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] < 1:
            raise ValueError(f"section {sid}: tile_xy_um must have shape (n_tiles >= 1, 2), got {xy.shape}")
        xy.setflags(write=False)
        channels = tuple(str(c) for c in self.channel_names)
        if not channels or len(set(channels)) != len(channels):
            raise ValueError(f"section {sid}: channel_names must be non-empty and unique, got {channels}")
        if int(self.n_z) < 1:
            raise ValueError(f"section {sid}: n_z must be >= 1, got {self.n_z}")
        shape = tuple(int(v) for v in self.tile_shape_px)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"section {sid}: tile_shape_px must be (H, W) >= 1, got {self.tile_shape_px}")
        if not float(self.pixel_size_um) > 0:
            raise ValueError(f"section {sid}: pixel_size_um must be > 0, got {self.pixel_size_um}")
        size = tuple(float(v) for v in self.tile_size_um)
        if len(size) != 2:
            raise ValueError(f"section {sid}: tile_size_um must be (width, height), got {self.tile_size_um}")
        if self.planned_tile_z_um is None:
            planned_z = np.full(xy.shape[0], np.nan)
        else:
            planned_z = np.array(self.planned_tile_z_um, dtype=np.float64)
            if planned_z.shape != (xy.shape[0],):
                raise ValueError(
                    f"section {sid}: planned_tile_z_um must have shape ({xy.shape[0]},), "
                    f"got {planned_z.shape}"
                )
        planned_z.setflags(write=False)
        if self.pixel_affine_um is None:
            affine = np.eye(2) * float(self.pixel_size_um)
        else:
            affine = np.array(self.pixel_affine_um, dtype=np.float64)
            if affine.shape != (2, 2) or not np.all(np.isfinite(affine)) or np.linalg.det(affine) == 0:
                raise ValueError(
                    f"section {sid}: pixel_affine_um must be an invertible 2×2 matrix, got {affine}"
                )
        affine.setflags(write=False)
        object.__setattr__(self, "pixel_affine_um", affine)
        reserved = _LAYOUT_ATTRS & set(self.attrs)
        if reserved:
            raise ValueError(f"section {sid}: attrs may not set {sorted(reserved)} (taken from the layout)")
        object.__setattr__(self, "tile_xy_um", xy)
        object.__setattr__(self, "planned_tile_z_um", planned_z)
        object.__setattr__(self, "channel_names", channels)
        object.__setattr__(self, "n_z", int(self.n_z))
        object.__setattr__(self, "tile_shape_px", shape)
        object.__setattr__(self, "pixel_size_um", float(self.pixel_size_um))
        object.__setattr__(self, "tile_size_um", size)
        object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))

    @property
    def n_tiles(self) -> int:
        """Number of tiles."""
        return int(self.tile_xy_um.shape[0])


def _write_section(
    sections: h5py.Group, layout: SectionLayout, compression: str | None, *, name: str | None = None
) -> h5py.Group:
    n, c, z = layout.n_tiles, len(layout.channel_names), layout.n_z
    h, w = layout.tile_shape_px
    g = sections.create_group(name or layout.section_id)
    json_attrs: list[str] = []
    for key, value in layout.attrs.items():
        if value is None:
            continue
        if isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_)):
            g.attrs[key] = value
        else:
            g.attrs[key] = _to_json(value)
            json_attrs.append(key)
    g.attrs["channel_names"] = _to_json(layout.channel_names)
    g.attrs["pixel_size_um"] = layout.pixel_size_um
    g.attrs["pixel_affine_um"] = _to_json(layout.pixel_affine_um)
    g.attrs["tile_size_um"] = np.asarray(layout.tile_size_um, dtype=np.float64)
    g.attrs["json_attrs"] = _to_json(sorted(json_attrs))
    tiles_options: dict[str, Any] = {"compression": compression}
    if compression is None:
        # Allocate every image's chunk now: writing pixels then only overwrites
        # raw bytes in place and never changes the chunk index, so a crash
        # mid-write cannot leave the index pointing at space HDF5 has not yet
        # recorded (which would make resuming fail). Unwritten chunks read as
        # zeros; the file is sparse until the tiles arrive.
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        tiles_options.update(dcpl=dcpl, fill_time="never")
    g.create_dataset(
        "tiles",
        shape=(n, c, z, h, w),
        dtype=np.uint16,
        chunks=(1, 1, 1, h, w),
        fillvalue=0,
        **tiles_options,
    )
    g.create_dataset("tile_xy_um", data=layout.tile_xy_um)
    g.create_dataset("planned_tile_z_um", data=layout.planned_tile_z_um)
    g.create_dataset("tile_z_um", data=np.full(n, np.nan))
    g.create_dataset("tile_status", data=np.zeros(n, dtype=np.uint8))
    g.create_dataset("tile_meta", data=[""] * n, dtype=_STR)
    _create_crc_dataset(g, (n, c, z))
    if name is None:  # a pass's results are part of its section's analysis
        g.create_group("analysis")
    return g


def _create_crc_dataset(group: h5py.Group, shape: tuple[int, int, int]) -> h5py.Dataset:
    # Written when a tile completes, before its status (see ScanWriter.complete_tile). HDF5's
    # Fletcher-32 filter was not used: a filtered dataset has every chunk written at creation
    # (measured: 1,049 MB on disk at once for 2,000 tiles of 512² instead of a sparse file, 4.8 s),
    # which gives up the sparse, pre-allocated tiles that crash safety and live reading rely on.
    return group.create_dataset(TILE_CRC_DATASET, data=np.full(shape, NO_CRC, dtype=np.int64))


def _write_calibration(
    f: h5py.File,
    dark_frames: Sequence[DarkFrames],
    files: Mapping[Path, Sequence[str]],
    *,
    replace: bool,
) -> list[str]:
    group = require_calibration_group(f)
    written = []
    for dark in dark_frames:
        write_dark_frames(group, dark)
        written.append(f"dark/{dark.channel}")
    for path, parts in files.items():
        written += copy_calibration_parts(group, path, parts, replace=replace)
    return written


# ------------------------------------------------------------------------ writer


@dataclass
class _OpenSection:
    group: h5py.Group
    tiles: h5py.Dataset
    tile_z_um: h5py.Dataset
    tile_status: h5py.Dataset
    tile_meta: h5py.Dataset
    tile_crc32: h5py.Dataset
    status: np.ndarray  # cached copy of tile_status; the writer is its only writer
    channel_names: tuple[str, ...]
    tile_xy_um: np.ndarray
    planned_tile_z_um: np.ndarray


class ScanWriter:
    """Writes one scan file: tiles as they arrive, status, events; resumable.

    Create with :meth:`create` or reopen with :meth:`open_for_resume`; use as
    a context manager or call :meth:`close`.

    Crash safety: a tile becomes *done* only in :meth:`complete_tile`, which
    writes the tile's focus and metadata, flushes, *then* sets its status and
    flushes again, and only after every channel × z image of the tile was
    written by this writer. A crash at any moment therefore leaves each tile
    either done with all its pixels and metadata on disk, or not done. Done
    tiles are never written again. A write error (e.g. a full disk) stops
    the writer: every later call raises :class:`StorageError`; resume with
    :meth:`open_for_resume`.

    Threads: a writer is owned by one thread at a time and is not for
    concurrent use. It may be handed from one thread to another once the
    first has stopped using it, e.g. created by the controller, written by
    pymmcore-plus' relay thread during ``core.mda.run`` (which joins that
    thread before returning), then closed by the controller. A call that
    overlaps a call from another thread raises :class:`StorageError`.
    """

    def __init__(self, file: h5py.File, path: Path) -> None:
        """Wrap an open file; use :meth:`create` or :meth:`open_for_resume` instead."""
        self._file = file
        self._path = path
        self._guard = threading.Lock()
        self._guard_owner: str | None = None
        self._stopped: str | None = None  # why the writer stopped after a write error
        self._sections: dict[str, _OpenSection] = {}
        self.repairs: dict[str, Any] = {}
        """What :meth:`open_for_resume` repaired (see :func:`.repair.describe_repairs`)."""
        # (section, tile) -> {(channel, z)} images written by this writer
        self._written: dict[tuple[str, int], set[tuple[int, int]]] = {}
        self.fsync_per_tile = False
        """Make each tile durable (``os.fsync``) before and after its status: power-cut safe, slower."""
        # images written by this writer and not yet completed: (section, tile) -> {(channel, z): crc}
        self._crcs: dict[tuple[str, int], dict[tuple[int, int], int]] = {}
        for sid, g in _tile_groups(file):
            self._open_group(sid, g)

    def _open_group(self, sid: str, g: h5py.Group) -> None:
        ds = {name: g[name] for name in _SECTION_DATASETS}
        crc = g.get(TILE_CRC_DATASET)
        if crc is None:  # a file from before checksums: its done tiles stay unverified
            n, c, z = (int(v) for v in ds["tiles"].shape[:3])
            crc = _create_crc_dataset(g, (n, c, z))
        self._sections[sid] = _OpenSection(
            group=g,
            tiles=ds["tiles"],
            tile_z_um=ds["tile_z_um"],
            tile_status=ds["tile_status"],
            tile_meta=ds["tile_meta"],
            tile_crc32=crc,
            status=np.asarray(ds["tile_status"][()], dtype=np.uint8),
            channel_names=tuple(json.loads(g.attrs["channel_names"])),
            tile_xy_um=np.asarray(ds["tile_xy_um"][()], dtype=np.float64),
            planned_tile_z_um=_planned_z(g),
        )

    # ------------------------------------------------------------ construction

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        plan_yaml: str,
        sections: Sequence[SectionLayout],
        config_path: str,
        config_text: str,
        core_state: Mapping[str, Any],
        overwrite: bool = False,
        compression: str | None = None,
        dark_frames: Sequence[DarkFrames] = (),
        calibration_files: Mapping[Path, Sequence[str]] | None = None,
    ) -> ScanWriter:
        """Create a new scan file with every section's datasets, all tiles pending.

        Parameters
        ----------
        path : path-like
            File to create.
        plan_yaml : str
            The scan plan as YAML text.
        sections : sequence of SectionLayout
            Sections to tile; ids must be unique.
        config_path, config_text : str
            The hardware configuration file used and its text.
        core_state : Mapping
            The core's state at start (e.g. ``core.state()``), stored as JSON.
        overwrite : bool
            Replace an existing file (its tiles are lost). Default: refuse.
        compression : str, optional
            h5py compression filter for the tiles (e.g. ``"gzip"``, ``"lzf"``);
            default none, the fastest to write. Compressed chunks are
            allocated as they are written, which gives up the "pixels never
            change HDF5's structures" property (see the module docstring).
        dark_frames : sequence of DarkFrames
            Raw dark frames taken at the scan's start, stored in ``/calibration``
            (:mod:`acquisition.storage.calibration`) with the file, before any tile.
        calibration_files : mapping of path to parts, optional
            Calibration files beside the hardware config and the parts of each to
            copy into ``/calibration`` (``"psf"``, ``"flat/<channel>"``).

        Raises
        ------
        StorageError
            If the file exists (and not ``overwrite``) or cannot be written.
        """
        path = Path(path)
        if not sections:
            raise StorageError(f"cannot create {path}: a scan needs at least one section")
        ids = [s.section_id for s in sections]
        if dupes := sorted({i for i in ids if ids.count(i) > 1}):
            raise StorageError(f"cannot create {path}: duplicate section ids {dupes}")
        if path.exists() and not overwrite:
            raise StorageError(
                f"scan file {path} already exists; resume it (cordscope scan --resume) "
                "or overwrite it (--overwrite) and lose its tiles"
            )
        if path.exists() and in_use(path):
            raise StorageError(
                f"cannot overwrite {path}: it is in use (a running scan writes it, or a program has it "
                "open); wait for that scan to end or write to another file"
            )
        # Built under a temporary name and moved into place once complete, so a
        # crash while creating leaves no half-made scan file at `path`.
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
        try:
            f = h5py.File(tmp, "w", **_WRITER_CACHE)
        except OSError as e:
            raise StorageError(f"cannot create scan file {path}: {e}") from e
        try:
            f.attrs["created"] = _now_iso()
            f.attrs["software_json"] = _to_json(_software_versions())
            f.create_dataset("plan", data=plan_yaml, dtype=_STR)
            hw = f.create_group("hardware")
            hw.attrs["config_file"] = str(config_path)
            hw.create_dataset("config_text", data=config_text, dtype=_STR)
            hw.create_dataset("core_state_json", data=_to_json(core_state), dtype=_STR)
            group = f.create_group("sections", track_order=True)  # keep the plan's section order
            for layout in sections:
                _write_section(group, layout, compression)
            f.create_dataset("events", shape=(0,), maxshape=(None,), chunks=(256,), dtype=_STR)
            if dark_frames or calibration_files:
                _write_calibration(f, dark_frames, calibration_files or {}, replace=True)
            # Written last: a file whose creation was interrupted is not a scan.
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.flush()
        except (OSError, TypeError) as e:
            f.close()
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot create scan file {path}: {e}") from e
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        f.close()
        try:
            if overwrite:
                # the old file stays locked while it is replaced: a scan cannot start on it meanwhile
                with exclusive_lock(path) as free:
                    if not free:
                        raise StorageError(
                            f"cannot overwrite {path}: it is in use (a running scan writes it)"
                        )
                    os.replace(tmp, path)
            else:
                os.link(tmp, path)  # refuses to replace a file that appeared meanwhile
                tmp.unlink()
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot create scan file {path}: {e}") from e
        except StorageError:
            tmp.unlink(missing_ok=True)
            raise
        return cls(_open_h5(path, "r+"), path)

    @classmethod
    def open_for_resume(cls, path: str | os.PathLike[str]) -> ScanWriter:
        """Reopen an existing scan to write its pending (and failed) tiles.

        First repairs what a crash or a failed write can leave behind, and
        logs a ``repair`` event if anything was done: the file's length and
        recorded end restored (:func:`_restore_length`,
        :func:`_extend_allocation`), unreadable metadata of unfinished tiles
        cleared and unreadable events dropped (:func:`_recover`).

        Raises
        ------
        StorageError
            If the file is missing, not a CordScope scan, of a newer format
            version, cannot be opened for writing, or cannot be repaired.
        """
        path = Path(path)
        repairs: dict[str, Any] = dict(_repair_file_ends(path))
        f = _open_h5(path, "r+")
        try:
            _check_format(f, path)
            _check_structure(f, path, statuses=False)
            repairs.update(_recover(f, lost_from_byte=repairs.get("lost_from_byte")))
            writer = cls(f, path)
        except BaseException:
            f.close()
            raise
        if repairs:  # the caller tells the user (see repairs_since_last_run); the file's events keep it
            logger.info("%s", describe_repairs(path, repairs))
            writer.log_event(EventKind.REPAIR, **repairs)
        writer.repairs = repairs
        return writer

    # -------------------------------------------------------------- ownership

    @contextlib.contextmanager
    def _owned(self) -> Iterator[None]:
        if not self._guard.acquire(blocking=False):
            raise StorageError(
                f"ScanWriter for {self._path} is in use by thread {self._guard_owner!r} and was called "
                f"from thread {threading.current_thread().name!r}: one thread at a time owns a writer"
            )
        self._guard_owner = threading.current_thread().name
        try:
            if self._stopped is not None:
                raise StorageError(f"ScanWriter for {self._path} stopped after an error: {self._stopped}")
            if not self._file:
                raise StorageError(f"ScanWriter for {self._path} is closed")
            yield
        finally:
            self._guard_owner = None
            self._guard.release()

    # ------------------------------------------------------------------ access

    @property
    def path(self) -> Path:
        """The scan file."""
        return self._path

    @property
    def section_ids(self) -> tuple[str, ...]:
        """Section ids in file order (their passes not included, see :attr:`pass_keys`)."""
        return tuple(k for k in self._sections if split_pass_key(k)[1] is None)

    @property
    def pass_keys(self) -> tuple[str, ...]:
        """Keys ``<section>@<pass>`` of the sections' further passes (:meth:`add_pass`), in file order.

        Every method taking a ``section_id`` takes a pass key too.
        """
        return tuple(k for k in self._sections if split_pass_key(k)[1] is not None)

    def add_pass(self, layout: SectionLayout, *, section_id: str, name: str, attrs: Mapping[str, Any]) -> str:
        """Add a further pass over a section (e.g. at another objective), all its tiles pending.

        The pass is a group ``/sections/<id>/passes/<name>`` with the datasets
        of a section (``layout.section_id`` is ignored); readers of format 1
        that know no passes read the file as before. ``pass_complete`` is set
        last: a pass interrupted while being made is removed on resume.

        Parameters
        ----------
        layout : SectionLayout
            The pass's tiles, channels and pixel size.
        section_id : str
            The section it belongs to.
        name : str
            The pass's name (e.g. the objective, ``"20x"``): letters, digits, ``_``, ``.``, ``-``.
        attrs : Mapping
            Extra attributes (e.g. ``objective``, ``kind``), as a section's.

        Returns
        -------
        str
            The pass's key ``<section>@<name>`` (:func:`pass_key`).

        Raises
        ------
        StorageError
            If the section is unknown, the pass exists, or on a disk error.
        """
        key = pass_key(section_id, name)
        if not name or not all(ch.isalnum() or ch in "_.-" for ch in name):
            raise StorageError(f"pass name {name!r} may contain only letters, digits, '_', '.' and '-'")
        with self._owned():
            section = self._section(section_id)
            if key in self._sections:
                raise StorageError(f"{self._path}: section {section_id} already has a pass {name!r}")
            described = SectionLayout(
                section_id=name,
                tile_xy_um=layout.tile_xy_um,
                channel_names=layout.channel_names,
                n_z=layout.n_z,
                tile_shape_px=layout.tile_shape_px,
                pixel_size_um=layout.pixel_size_um,
                tile_size_um=layout.tile_size_um,
                planned_tile_z_um=layout.planned_tile_z_um,
                attrs={**attrs, "section_id": section_id, "pass_name": name},
            )
            nbytes = 2 * described.n_tiles * len(described.channel_names) * described.n_z
            nbytes *= described.tile_shape_px[0] * described.tile_shape_px[1]
            with self._writing(f"pass {key}", nbytes=nbytes):
                passes = section.group.require_group(PASSES_GROUP)
                compression = section.tiles.compression
                g = _write_section(passes, described, compression, name=name)
                self._file.flush()
                g.attrs[_PASS_COMPLETE_ATTR] = 1
                self._file.flush()
            self._open_group(key, g)
        return key

    def section_shape(self, section_id: str) -> tuple[int, int, int, int, int]:
        """``(n_tiles, n_channels, n_z, H, W)`` of a section's tiles."""
        return tuple(int(v) for v in self._section(section_id).tiles.shape)  # type: ignore[return-value]

    def channel_names(self, section_id: str) -> tuple[str, ...]:
        """Channel names of a section, in channel-index order."""
        return self._section(section_id).channel_names

    def tile_xy_um(self, section_id: str) -> np.ndarray:
        """Planned stage positions of a section's tiles, ``(n_tiles, 2)`` µm (a copy)."""
        return self._section(section_id).tile_xy_um.copy()

    def planned_tile_z_um(self, section_id: str) -> np.ndarray:
        """Planned focus of a section's tiles, ``(n_tiles,)`` µm, NaN where none (a copy)."""
        return self._section(section_id).planned_tile_z_um.copy()

    def tile_z_um(self, section_id: str) -> np.ndarray:
        """Focus used per tile, ``(n_tiles,)`` µm, NaN where not done (read from the file)."""
        with self._owned():
            return np.asarray(self._section(section_id).tile_z_um[()], dtype=np.float64)

    def tile_status_array(self, section_id: str) -> np.ndarray:
        """Status of every tile of a section, ``(n_tiles,)`` uint8 (a copy; see :class:`TileStatus`)."""
        return self._section(section_id).status.copy()

    def tile_status(self, section_id: str, tile_index: int) -> TileStatus:
        """Status of one tile."""
        sec = self._section(section_id)
        self._check_tile(section_id, sec, tile_index)
        return TileStatus(int(sec.status[tile_index]))

    def pending_tiles(self) -> dict[str, np.ndarray]:
        """Return the indices of the tiles not done (pending or failed) per section and pass, for resume."""
        return {
            sid: np.flatnonzero(sec.status != TileStatus.DONE).astype(np.int64)
            for sid, sec in self._sections.items()
        }

    @property
    def dark_frame_channels(self) -> tuple[str, ...]:
        """Channels whose raw dark frames the file holds (``/calibration/dark``)."""
        return dark_frame_channels(self._file.get("calibration"))

    def add_calibration(
        self,
        *,
        dark_frames: Sequence[DarkFrames] = (),
        files: Mapping[Path, Sequence[str]] | None = None,
    ) -> list[str]:
        """Add calibration to a file being resumed, keeping what it holds; flushed.

        Dark frames of channels that already have some, and parts of files the
        group already holds, are not written (a resumed scan keeps the
        calibration it started with). Returns the parts written.
        """
        with self._owned():
            have = set(self.dark_frame_channels)
            new = [d for d in dark_frames if d.channel not in have]
            nbytes = sum(d.frames.nbytes for d in new)
            with self._writing("calibration", nbytes=nbytes):
                written = _write_calibration(self._file, new, files or {}, replace=False)
                self._file.flush()
            return written

    def _section(self, section_id: str) -> _OpenSection:
        try:
            return self._sections[section_id]
        except KeyError:
            raise StorageError(
                f"{self._path} has no section {section_id!r} (sections: {', '.join(self._sections)})"
            ) from None

    @staticmethod
    def _check_tile(section_id: str, sec: _OpenSection, tile_index: int) -> None:
        n = sec.status.shape[0]
        if not 0 <= tile_index < n:
            raise StorageError(f"section {section_id} has tiles 0..{n - 1}, not tile {tile_index}")

    def _check_not_done(self, section_id: str, sec: _OpenSection, tile_index: int) -> None:
        if sec.status[tile_index] == TileStatus.DONE:
            raise StorageError(
                f"tile {section_id}/{tile_index} in {self._path} is already done; "
                "done tiles are never rewritten"
            )

    @contextlib.contextmanager
    def _writing(self, what: str, nbytes: int = 0) -> Iterator[None]:
        """Run h5py writes of ``what``; on any write error, stop the writer (see :meth:`_stop`)."""
        self._check_free_space(what, nbytes)
        try:
            yield
        except StorageError:
            raise
        except (OSError, RuntimeError) as e:  # h5py raises RuntimeError for some failed flushes
            message = (
                f"disk error writing {what} to {self._path}: {_first_line(e)}. The writer has stopped; "
                "tiles done so far are intact. Free disk space, then resume the scan."
            )
            self._stop(message)
            raise StorageError(message) from e

    def _check_free_space(self, what: str, nbytes: int) -> None:
        free = _free_bytes(self._path.parent)
        if free is not None and free < nbytes + FREE_SPACE_RESERVE_BYTES:
            # Refusing before the disk is full keeps the file intact and writable.
            raise StorageError(
                f"disk full: not writing {what} to {self._path}: {free / 1e6:.0f} MB free, "
                f"{(nbytes + FREE_SPACE_RESERVE_BYTES) / 1e6:.0f} MB needed. "
                "Free disk space, then resume the scan."
            )

    def _stop(self, reason: str) -> None:
        """Close the file after a write error without letting HDF5 write to it again.

        After a failed write, HDF5's in-memory state holds changes it could
        not store. Closing normally would retry them and fail (leaving h5py
        objects that crash the interpreter when collected) or store some of
        them. Swapping HDF5's file descriptor for a scratch file first lets
        the close succeed while the scan file stays exactly as the error
        left it, like after a crash at that moment, which the write order
        makes safe.
        """
        self._stopped = reason
        try:
            fd = self._file.id.get_vfd_handle()
            scratch = _scratch_fd()
            try:
                os.dup2(scratch, fd)
            finally:
                os.close(scratch)
        except (OSError, RuntimeError, ValueError, TypeError) as e:
            logger.error("could not detach %s from HDF5 after a disk error: %s", self._path, e)
        try:
            self._file.close()
        except (OSError, RuntimeError) as e:
            logger.warning("closing %s after a disk error: %s", self._path, _first_line(e))

    # ----------------------------------------------------------------- writing

    def write_image(
        self, section_id: str, tile_index: int, channel_index: int, z_index: int, image: np.ndarray
    ) -> None:
        """Write one image of a tile (not flushed, not marked done).

        Parameters
        ----------
        section_id : str
        tile_index, channel_index, z_index : int
            Where the image goes.
        image : np.ndarray
            ``(H, W)`` image of the section's tile shape; ``uint16`` or a dtype
            that converts to it without loss (``uint8``, ``bool``).

        Raises
        ------
        StorageError
            Wrong shape or dtype, index out of range, tile already done, or a
            disk error (the file's done tiles stay intact).
        """
        with self._owned():
            sec = self._section(section_id)
            self._check_tile(section_id, sec, tile_index)
            _, n_c, n_z, h, w = sec.tiles.shape
            if not (0 <= channel_index < n_c and 0 <= z_index < n_z):
                raise StorageError(
                    f"tile {section_id}/{tile_index}: channel {channel_index}, z {z_index} out of range "
                    f"({n_c} channels, {n_z} planes)"
                )
            arr = np.asarray(image)
            if arr.shape != (h, w):
                raise StorageError(
                    f"tile {section_id}/{tile_index}: image shape {arr.shape} does not match the "
                    f"section's tile shape {(h, w)}"
                )
            if not np.can_cast(arr.dtype, np.uint16, casting="safe"):
                raise StorageError(
                    f"tile {section_id}/{tile_index}: image dtype {arr.dtype} cannot be stored as "
                    "uint16 without loss"
                )
            self._check_not_done(section_id, sec, tile_index)
            pixels = np.ascontiguousarray(arr, dtype=np.uint16)
            with self._writing(f"tile {section_id}/{tile_index}", nbytes=2 * h * w):
                sec.tiles[tile_index, channel_index, z_index] = pixels
            self._written.setdefault((section_id, tile_index), set()).add((channel_index, z_index))
            self._crcs.setdefault((section_id, tile_index), {})[(channel_index, z_index)] = image_crc32(
                pixels
            )

    def complete_tile(
        self, section_id: str, tile_index: int, *, z_um: float, meta: Mapping[str, Any]
    ) -> None:
        """Mark a tile done after all its images were written.

        Writes ``tile_z_um`` and ``tile_meta`` (``meta`` as JSON, with a
        ``"time"`` key added if absent), flushes, then sets the status to
        done and flushes again: the order is the crash-safety contract.

        Raises
        ------
        StorageError
            If some channel × z image of the tile was not written by this
            writer, the tile is already done, or on a disk error.
        """
        with self._owned():
            sec = self._section(section_id)
            self._check_tile(section_id, sec, tile_index)
            self._check_not_done(section_id, sec, tile_index)
            _, n_c, n_z, _, _ = sec.tiles.shape
            written = self._written.get((section_id, tile_index), set())
            missing = sorted({(c, z) for c in range(n_c) for z in range(n_z)} - written)
            if missing:
                raise StorageError(
                    f"tile {section_id}/{tile_index} cannot be marked done: (channel, z) images "
                    f"{missing} were not written"
                )
            meta_json = _to_json({"time": _now_iso(), **meta})
            crcs = self._crcs.get((section_id, tile_index), {})
            crc = np.array([[crcs[(c, z)] for z in range(n_z)] for c in range(n_c)], dtype=np.int64)
            with self._writing(f"tile {section_id}/{tile_index}", nbytes=len(meta_json)):
                sec.tile_z_um[tile_index] = float(z_um)
                sec.tile_meta[tile_index] = meta_json
                sec.tile_crc32[tile_index] = crc
                self._file.flush()
                self._sync()  # with fsync_per_tile: pixels durable before the status says so
                self._set_status(sec, tile_index, TileStatus.DONE)
                self._file.flush()
                self._sync()
            sec.status[tile_index] = TileStatus.DONE
            self._written.pop((section_id, tile_index), None)
            self._crcs.pop((section_id, tile_index), None)

    def _sync(self) -> None:
        if self.fsync_per_tile:
            os.fsync(self._file.id.get_vfd_handle())

    def _set_status(self, sec: _OpenSection, tile_index: int, status: TileStatus) -> None:
        sec.tile_status[tile_index] = np.uint8(status)

    def fail_tile(self, section_id: str, tile_index: int, *, reason: str, meta: Mapping[str, Any]) -> None:
        """Mark a tile failed (status 2) with its metadata, and log a ``tile_failed`` event.

        A failed tile stays pending for resume. A done tile cannot be failed.
        """
        with self._owned():
            sec = self._section(section_id)
            self._check_tile(section_id, sec, tile_index)
            self._check_not_done(section_id, sec, tile_index)
            meta_json = _to_json({"time": _now_iso(), "error": reason, **meta})
            with self._writing(f"tile {section_id}/{tile_index}", nbytes=len(meta_json)):
                sec.tile_meta[tile_index] = meta_json
                self._file.flush()
                self._set_status(sec, tile_index, TileStatus.FAILED)
                self._file.flush()
                self._sync()
            sec.status[tile_index] = TileStatus.FAILED
            self._append_event(
                EventKind.TILE_FAILED, {"section": section_id, "tile": int(tile_index), "reason": reason}
            )

    def repairs_since_last_run(self) -> list[dict[str, Any]]:
        """What the ``repair`` events logged since the last run started or was prepared say was repaired.

        A resume may repair a file more than once before it runs (reading
        its plan, then opening it to write); this gathers them for the user.
        """
        with self._owned():
            texts, _ = _read_strings(self._file["events"])
        repairs: list[dict[str, Any]] = []
        for text in texts:
            if not text:
                continue
            event = json.loads(text)
            kind = event.get("kind")
            if kind in (EventKind.NEW_SCAN, EventKind.RESUME_SCAN, EventKind.START):
                repairs.clear()
            elif kind == EventKind.REPAIR:
                repairs.append({k: v for k, v in event.items() if k not in ("time", "kind")})
        return repairs

    def log_event(self, kind: EventKind, **fields: Any) -> None:
        """Append ``{"time": iso, "kind": kind, **fields}`` to ``/events`` and flush."""
        with self._owned():
            self._append_event(kind, fields)

    def _append_event(self, kind: EventKind, fields: Mapping[str, Any]) -> None:
        if {"time", "kind"} & set(fields):
            raise StorageError("event fields may not be named 'time' or 'kind'")
        text = _to_json({"time": _now_iso(), "kind": EventKind(kind).value, **fields})
        events = self._file["events"]
        with self._writing(f"event {kind!r}", nbytes=len(text)):
            n = events.shape[0]
            events.resize((n + 1,))
            events[n] = text
            self._file.flush()

    def flush(self) -> None:
        """Flush everything written so far to the file."""
        with self._owned(), self._writing("pending changes"):
            self._file.flush()

    def close(self) -> None:
        """Flush and close the file (idempotent; a no-op after a disk error stopped the writer)."""
        with self._guard:
            if not self._file or self._stopped is not None:
                return
            try:
                self._file.close()
            except (OSError, RuntimeError) as e:
                raise StorageError(f"disk error closing {self._path}: {_first_line(e)}") from e

    @property
    def closed(self) -> bool:
        """Whether the file was closed."""
        return not self._file

    def __enter__(self) -> ScanWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<ScanWriter {self._path} ({state})>"
