"""Reading a scan file: :class:`ScanFile` and :class:`SectionReader`, also while a scan writes it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np

from .calibration import CALIBRATION_GROUP, DarkFrames, read_dark_frames
from .format import (
    PASSES_GROUP,
    STANDARD_SECTION_ATTRS,
    TILE_CRC_DATASET,
    StorageError,
    TileCheck,
    TileStatus,
    _check_format,
    _check_live_readable,
    _check_structure,
    _FileLocked,
    _first_line,
    _open_h5,
    _open_live,
    _planned_z,
    _tile_groups,
    check_done_tiles,
    split_pass_key,
)
from .repair import _read_strings

# ------------------------------------------------------------------------ reader


@dataclass(frozen=True)
class SectionSummary:
    """Tile counts of one section."""

    n_tiles: int
    done: int
    failed: int
    pending: int


@dataclass(frozen=True)
class ScanSummary:
    """What a scan file holds, for ``cordscope info`` and reports."""

    path: Path
    format_version: int
    created: str
    file_size_bytes: int
    """Length of the file. Uncompressed scans are created at full length
    (sparse until tiles arrive); see ``disk_usage_bytes``."""
    disk_usage_bytes: int | None
    """Disk space the file occupies (``None`` where the OS does not say)."""
    duration_s: float | None
    """From the first ``start`` event to the last event; ``None`` without a start."""
    sections: Mapping[str, SectionSummary]

    @property
    def n_tiles(self) -> int:
        """Tiles in all sections."""
        return sum(s.n_tiles for s in self.sections.values())

    @property
    def done(self) -> int:
        """Done tiles in all sections."""
        return sum(s.done for s in self.sections.values())

    @property
    def complete(self) -> bool:
        """Whether every tile is done."""
        return self.done == self.n_tiles


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return tuple(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


class SectionReader:
    """Read access to one section of a scan file."""

    def __init__(self, group: h5py.Group, *, live: bool = False, key: str | None = None) -> None:
        self._group = group
        self._live = live
        self.section_id: str = key or group.name.rsplit("/", 1)[-1]
        """The section's id, or for a pass its key ``<section>@<pass>``."""

    @property
    def attrs(self) -> dict[str, Any]:
        """Section attributes, JSON ones decoded; standard ones ``None`` when absent."""
        raw = {k: _decode_attr(v) for k, v in self._group.attrs.items()}
        json_names = set(json.loads(raw.pop("json_attrs", "[]"))) | {"channel_names", "pixel_affine_um"}
        out: dict[str, Any] = dict.fromkeys(STANDARD_SECTION_ATTRS)
        for key, value in raw.items():
            out[key] = json.loads(value) if key in json_names and isinstance(value, str) else value
        out["channel_names"] = tuple(out["channel_names"])
        return out

    @property
    def n_tiles(self) -> int:
        """Number of tiles."""
        return int(self._group["tiles"].shape[0])

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Channel names in channel-index order."""
        return tuple(json.loads(self._group.attrs["channel_names"]))

    @property
    def n_z(self) -> int:
        """Focal planes per tile and channel."""
        return int(self._group["tiles"].shape[2])

    @property
    def tile_shape_px(self) -> tuple[int, int]:
        """Image shape ``(H, W)``."""
        shape = self._group["tiles"].shape
        return (int(shape[3]), int(shape[4]))

    @property
    def pixel_size_um(self) -> float:
        """Image pixel size on the slide (µm)."""
        return float(self._group.attrs["pixel_size_um"])

    @property
    def pixel_affine_um(self) -> np.ndarray:
        """Stage µm per pixel step along columns (column 0) and rows (column 1), ``(2, 2)`` float64.

        Micro-Manager's pixel-size affine as the scan used it; files written
        before it was stored read as ``pixel_size_um`` times the identity.
        """
        raw = self._group.attrs.get("pixel_affine_um")
        if raw is None:
            return np.eye(2) * self.pixel_size_um
        return np.asarray(json.loads(_decode_attr(raw)), dtype=np.float64).reshape(2, 2)

    @property
    def tile_xy_um(self) -> np.ndarray:
        """Planned tile positions, ``(n_tiles, 2)`` float64 µm."""
        return np.asarray(self._group["tile_xy_um"][()])

    @property
    def planned_tile_z_um(self) -> np.ndarray:
        """Focus planned per tile, ``(n_tiles,)`` float64 µm (NaN where none was planned)."""
        return _planned_z(self._group)

    @property
    def tile_z_um(self) -> np.ndarray:
        """Focus used per tile, ``(n_tiles,)`` float64 µm (NaN if not done)."""
        return np.asarray(self._group["tile_z_um"][()])

    @property
    def tile_status(self) -> np.ndarray:
        """Status per tile, ``(n_tiles,)`` uint8 (see :class:`TileStatus`)."""
        return np.asarray(self._group["tile_status"][()])

    def tile_meta(self, tile_index: int) -> dict[str, Any]:
        """Metadata of one tile.

        ``{}`` if none was written, or if the writer stopped while writing the
        metadata of a tile that is not done (resuming clears it).
        """
        try:
            text = self._group["tile_meta"].asstr()[tile_index]
        except (OSError, RuntimeError) as e:
            if self._live:
                raise StorageError(
                    f"{self._group.file.filename}: metadata of tile {self.section_id}/{tile_index} was "
                    "written after the file was opened while the scan runs; ScanFile.refresh() reads it"
                ) from e
            if self._group["tile_status"][tile_index] == TileStatus.DONE:
                raise StorageError(
                    f"{self._group.file.filename}: metadata of done tile {self.section_id}/{tile_index} "
                    f"is unreadable ({_first_line(e)}); resuming the scan repairs the file: "
                    f"cordscope scan --resume {self._group.file.filename}"
                ) from e
            return {}
        return json.loads(text) if text else {}

    def read_tile(self, tile_index: int) -> np.ndarray:
        """Pixels of one tile, ``(n_channels, n_z, H, W)`` uint16 (zeros where not written)."""
        try:
            return np.asarray(self._group["tiles"][tile_index])
        except (OSError, RuntimeError) as e:
            raise StorageError(
                f"{self._group.file.filename}: cannot read tile {self.section_id}/{tile_index}: "
                f"{_first_line(e)}"
            ) from e

    @property
    def analysis_group(self) -> h5py.Group | None:
        """The section's ``analysis`` group (read-only h5py group), ``None`` if absent."""
        group = self._group.get("analysis")
        return group if isinstance(group, h5py.Group) else None

    @property
    def tile_crc32(self) -> np.ndarray | None:
        """Stored CRC-32 per image, ``(n_tiles, n_channels, n_z)`` int64 (-1: none); None in older files."""
        ds = self._group.get(TILE_CRC_DATASET)
        return None if ds is None else np.asarray(ds[()])

    def check_done_tiles(self, *, progress: Callable[[int], None] | None = None) -> TileCheck:
        """Read every done tile and compare it with its stored checksums (see :class:`TileCheck`)."""
        return check_done_tiles(self._group, progress=progress)

    def done_indices(self) -> np.ndarray:
        """Return the indices of done tiles."""
        return np.flatnonzero(self.tile_status == TileStatus.DONE)

    def summary(self) -> SectionSummary:
        """Tile counts."""
        status = self.tile_status
        done = int(np.count_nonzero(status == TileStatus.DONE))
        failed = int(np.count_nonzero(status == TileStatus.FAILED))
        return SectionSummary(
            n_tiles=status.size, done=done, failed=failed, pending=status.size - done - failed
        )

    def __repr__(self) -> str:
        return f"<SectionReader {self.section_id} ({self.n_tiles} tiles)>"


class ScanFile:
    """A scan file opened read-only. Use :meth:`open`; a context manager.

    A file that another process is writing (a running scan) opens *live*
    (:attr:`live`): tile statuses and pixels are read from the file at each
    call, so done tiles appear as the scan completes them, and a tile reads
    as done only once its pixels are complete on disk. Tile metadata and
    events are read as of opening; :meth:`refresh` reopens.
    """

    def __init__(self, file: h5py.File, path: Path, format_version: int, *, live: bool = False) -> None:
        """Wrap an open file; use :meth:`open` instead."""
        self._file = file
        self.path = path
        self.format_version = format_version
        self.live = live
        """Whether the file was open for writing by another process when opened (see the class docstring)."""

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, beside_writer: bool = False) -> ScanFile:
        """Open a scan file for reading, also while another process writes it.

        With ``beside_writer`` the file is always opened the way a reader beside
        a running scan opens it (read-only, no lock, no raw-data caches), so this
        reader never holds a lock that a scan starting or resuming would meet.

        Raises
        ------
        StorageError
            If the file is missing, not HDF5, not a CordScope scan, of a
            newer format version than this CordScope reads, or a compressed
            scan that is being written (readable once the scan closes it).
        """
        path = Path(path)
        live = False
        if beside_writer:
            if not path.is_file():
                raise StorageError(f"scan file not found: {path}")
            f, live = _open_live(path), True
        else:
            try:
                f = _open_h5(path, "r")
            except _FileLocked:
                f, live = _open_live(path), True
        try:
            version = _check_format(f, path)
            _check_structure(f, path)
            if live:
                _check_live_readable(f, path)
        except BaseException:
            f.close()
            raise
        return cls(f, path, version, live=live)

    def refresh(self, *, beside_writer: bool = False) -> None:
        """Reopen the file to see what a running scan wrote since (metadata, events and passes included).

        ``beside_writer``: reopen it as :meth:`open` does with it (never taking a lock).
        """
        self.close()  # first: HDF5 would hand back the same open file, with its cached metadata
        reopened = ScanFile.open(self.path, beside_writer=beside_writer)
        self._file, self.format_version, self.live = reopened._file, reopened.format_version, reopened.live

    @property
    def created(self) -> str:
        """Creation time (ISO 8601, UTC)."""
        return str(_decode_attr(self._file.attrs["created"]))

    @property
    def software_versions(self) -> dict[str, str | None]:
        """Versions of the software that created the file."""
        return dict(json.loads(self._file.attrs["software_json"]))

    @property
    def plan_yaml(self) -> str:
        """The scan plan as YAML text."""
        return str(self._file["plan"].asstr()[()])

    @property
    def config_file(self) -> str:
        """Path of the hardware configuration used."""
        return str(_decode_attr(self._file["hardware"].attrs["config_file"]))

    @property
    def config_text(self) -> str:
        """Text of the hardware configuration used."""
        return str(self._file["hardware/config_text"].asstr()[()])

    @property
    def core_state(self) -> dict[str, Any]:
        """The core's state at the start of the scan."""
        return dict(json.loads(self._file["hardware/core_state_json"].asstr()[()]))

    @property
    def section_ids(self) -> tuple[str, ...]:
        """Section ids in file order."""
        return tuple(self._file["sections"].keys())

    def pass_keys(self, section_id: str | None = None) -> tuple[str, ...]:
        """Keys ``<section>@<pass>`` of the further passes (all, or one section's), in file order.

        A pass (e.g. an adaptive pass at 20x, ``/sections/<id>/passes/20x``)
        has the datasets of a section; :meth:`section` opens it by its key.
        """
        keys = [k for k, _ in _tile_groups(self._file) if split_pass_key(k)[1] is not None]
        return tuple(k for k in keys if section_id is None or split_pass_key(k)[0] == section_id)

    def section(self, section_id: str) -> SectionReader:
        """One section, or one pass by its key ``<section>@<pass>``."""
        sid, name = split_pass_key(section_id)
        try:
            group = self._file["sections"][sid]
            if name is not None:
                group = group[PASSES_GROUP][name]
            return SectionReader(group, live=self.live, key=section_id)
        except KeyError:
            raise StorageError(
                f"{self.path} has no section {section_id!r} (sections: {', '.join(self.section_ids)})"
            ) from None

    @property
    def calibration_group(self) -> h5py.Group | None:
        """The ``/calibration`` group (read-only; :mod:`acquisition.storage.calibration`), None if absent."""
        group = self._file.get(CALIBRATION_GROUP)
        return group if isinstance(group, h5py.Group) else None

    def dark_frames(self) -> dict[str, DarkFrames]:
        """Raw dark frames per channel taken at the scan's start (empty for files without)."""
        group = self.calibration_group
        return {} if group is None else read_dark_frames(group)

    def events(self) -> list[dict[str, Any]]:
        """Return the logged events, oldest first.

        Entries the writer was writing when it stopped (empty or unreadable)
        are left out.
        """
        events = []
        for i, text in enumerate(_read_strings(self._file["events"])[0]):
            if not text:
                continue
            try:
                event = json.loads(text)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                raise StorageError(
                    f"{self.path}: event {i} is not JSON of an event; the file is damaged or was edited"
                )
            events.append(event)
        return events

    def summary(self) -> ScanSummary:
        """Return counts per section, file size, creation time and duration."""
        events = self.events()
        starts = [e["time"] for e in events if e.get("kind") == "start"]
        duration_s = None
        if starts:
            t0 = datetime.fromisoformat(starts[0])
            duration_s = (datetime.fromisoformat(events[-1]["time"]) - t0).total_seconds()
        stat = self.path.stat()
        blocks = getattr(stat, "st_blocks", None)
        return ScanSummary(
            path=self.path,
            format_version=self.format_version,
            created=self.created,
            file_size_bytes=stat.st_size,
            disk_usage_bytes=None if blocks is None else 512 * blocks,
            duration_s=duration_s,
            sections=MappingProxyType({sid: self.section(sid).summary() for sid in self.section_ids}),
        )

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file:
            self._file.close()

    def __enter__(self) -> ScanFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ScanFile {self.path}>"
