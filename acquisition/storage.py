"""The HDF5 scan file: format ``"cordscope-scan"``, version 1.

One file holds one scan: the plan that produced it, the hardware it ran on,
and, per section, every tile's pixels, planned position, focus, status and
metadata, plus a log of events (start, pause, retry, fault, finish)::

    /                   attrs: format, format_version, created, software_json
    /plan               the ScanPlan as YAML text (scalar string)
    /hardware           attrs: config_file; datasets: config_text, core_state_json
    /sections/<id>/     attrs: animal, group, level, orientation, injection_side,
                        polygon_um (JSON), channel_names (JSON), pixel_size_um,
                        tile_size_um, json_attrs (JSON list of the attrs stored as JSON)
        tiles           uint16 (n_tiles, n_channels, n_z, H, W), one chunk per image
        tile_xy_um      float64 (n_tiles, 2), planned stage position of each tile
        planned_tile_z_um float64 (n_tiles,), planned focus (NaN: none planned)
        tile_z_um       float64 (n_tiles,), focus used (NaN until known)
        tile_status     uint8 (n_tiles,), 0 pending, 1 done, 2 failed
        tile_meta       UTF-8 strings (n_tiles,), per-tile JSON; "" until written
        analysis/       reserved for the analysis
    /events             resizable UTF-8 strings, one JSON object per event

Everything is plain datasets and JSON / YAML text, so a reader needs nothing
but h5py. The file uses HDF5's default (oldest compatible) format, not SWMR:
a SWMR file killed mid-write is left flagged "open for write" and plain
``h5py.File(path, "r")`` refuses it until the flag is cleared, whereas a
default one survives ``SIGKILL`` with every done tile intact and opens as it
is, given the write order that :class:`ScanWriter` keeps: *pixels and
metadata, flush, then status, flush*. A tile counts as acquired only once its
status is 1.

Reading while a scan writes (another process: the GUI, napari,
``cordscope info``): the writer holds HDF5's exclusive file lock, so
:meth:`ScanFile.open` opens such a file *live*: read-only, without taking a
lock (the writer is never blocked or disturbed) and with HDF5's raw-data
caches off, so every read of ``tile_status`` and of pixels goes to the file.
That is safe without SWMR because everything a reader needs to find a tile
is fixed when the file is created: the tile datasets' chunks are allocated
up front (uncompressed scans, the default), so writing pixels and statuses
only overwrites raw bytes at fixed places, and a status reads 1 only after
the tile's pixels were flushed. A live reader therefore never sees a
half-written tile. What does change during a scan (``tile_meta`` strings and
``/events``) is read as of opening (:meth:`ScanFile.refresh` reopens); an
entry caught mid-write reads as missing, never as wrong data. Compressed
scans allocate chunks as they go and are readable only once closed.

Crash safety in detail:

- Uncompressed tiles have every image's chunk allocated when the file is
  created (the file is sparse until tiles arrive), so writing pixels never
  changes HDF5's structures.
- A crash (or a failed write) in the middle of HDF5's flush can still leave
  the newest strings (the metadata of the tile being completed, the newest
  event) pointing at storage HDF5 had not recorded. Done tiles are not
  affected by the write order, but such a file may need repair before it can
  be written again: :meth:`ScanWriter.open_for_resume` does it and logs a
  ``repair`` event.
- The writer refuses to write when less than :data:`FREE_SPACE_RESERVE_BYTES`
  are free, so a full disk is normally met before HDF5 is; after any write
  error it detaches from the file and stops, leaving the file as a crash
  would.

- :class:`ScanWriter` writes (and resumes) a scan; one thread at a time.
- :class:`MDAWriterOutput` plugs a writer into pymmcore-plus' MDA runner as
  an ordinary output (``core.mda.run(seq, output=MDAWriterOutput(writer))``).
- :class:`ScanFile` reads a scan (analysis, ``cordscope info``, tests).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from .errors import CordScopeError

if TYPE_CHECKING:
    import useq

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FREE_SPACE_RESERVE_BYTES",
    "STANDARD_SECTION_ATTRS",
    "MDAWriterOutput",
    "ScanFile",
    "ScanSummary",
    "ScanWriter",
    "SectionLayout",
    "SectionReader",
    "SectionSummary",
    "StorageError",
    "TileStatus",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "cordscope-scan"
"""Value of the root ``format`` attribute."""
FORMAT_VERSION = 1
"""Value of the root ``format_version`` attribute this module writes (and the newest it reads)."""

#: Free disk space (bytes) the writer leaves untouched: it refuses a write that
#: would eat into it, so the file is never caught half-written by a full disk.
FREE_SPACE_RESERVE_BYTES = 64 * 1024**2

#: Section attributes every section reports (``None`` when not given).
STANDARD_SECTION_ATTRS: tuple[str, ...] = (
    "animal",
    "group",
    "level",
    "orientation",
    "injection_side",
    "polygon_um",
    "lesion_epicenter_um",
)
# Section attributes that the writer sets itself from the layout.
_LAYOUT_ATTRS = frozenset({"channel_names", "pixel_size_um", "tile_size_um", "json_attrs"})
_SECTION_DATASETS = ("tiles", "tile_xy_um", "tile_z_um", "tile_status", "tile_meta")
_STR = h5py.string_dtype("utf-8")


class StorageError(CordScopeError):
    """A scan file cannot be created, opened, read or written; the message says which and why."""


class _FileLocked(StorageError):
    """The file is locked by a writer (another process has it open for writing)."""


class TileStatus(IntEnum):
    """Values of ``tile_status``."""

    PENDING = 0
    DONE = 1
    FAILED = 2


# ----------------------------------------------------------------------- helpers


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only: numpy → Python, tuples → lists, NaN/inf → None."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v) for v in items]
    if isinstance(obj, (Path, datetime)):
        return str(obj) if isinstance(obj, Path) else obj.isoformat()
    if hasattr(obj, "model_dump"):  # pydantic models, e.g. useq objects
        return _jsonable(obj.model_dump(mode="json"))
    raise TypeError(f"{type(obj).__name__} cannot be stored as JSON")


def _to_json(obj: Any) -> str:
    return json.dumps(_jsonable(obj), allow_nan=False, ensure_ascii=False)


def _software_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in ("cordscope", "pymmcore-plus", "useq-schema", "h5py", "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    versions["hdf5"] = h5py.version.hdf5_version
    versions["python"] = platform.python_version()
    return versions


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _planned_z(group: h5py.Group) -> np.ndarray:
    if "planned_tile_z_um" in group:
        return np.asarray(group["planned_tile_z_um"][()], dtype=np.float64)
    return np.full(group["tiles"].shape[0], np.nan)


def _scratch_fd() -> int:
    """Open a descriptor to an anonymous scratch file (in memory where possible)."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("cordscope-scan-detached")
    fd, name = tempfile.mkstemp(prefix="cordscope-scan-detached-")
    os.unlink(name)
    return fd


def _check_format(f: h5py.File, path: Path) -> int:
    """Return the file's format version, or raise if this module cannot read it."""
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if fmt is None:
        raise StorageError(
            f"{path} is not a CordScope scan file: it has no 'format' attribute "
            "(another HDF5 file, or a scan whose creation was interrupted)"
        )
    if fmt != FORMAT_NAME:
        raise StorageError(f"{path} is not a CordScope scan file: its format is {fmt!r}, not {FORMAT_NAME!r}")
    try:
        version = int(f.attrs["format_version"])
    except (KeyError, TypeError, ValueError) as e:
        raise StorageError(f"{path}: the {FORMAT_NAME} file has no valid 'format_version' attribute") from e
    if version > FORMAT_VERSION:
        raise StorageError(
            f"{path} is a {FORMAT_NAME} version {version} file; this CordScope reads versions "
            f"up to {FORMAT_VERSION}. Update CordScope to open it."
        )
    if version < 1:
        raise StorageError(f"{path}: unknown {FORMAT_NAME} format_version {version}")
    return version


#: Attempts (and pause between them) to open a file live: an open may meet the
#: writer in the middle of a flush (e.g. the superblock half rewritten) and fail.
_LIVE_OPEN_ATTEMPTS = 20
_LIVE_OPEN_RETRY_S = 0.05


def _open_live(path: Path) -> h5py.File:
    """Open a file that another process is writing: read-only, no lock, no raw-data caches.

    Without the sieve buffer and the chunk cache, every read of a status or a
    tile goes to the file instead of returning bytes cached before the writer
    changed them.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_file_locking(False, True)
    fapl.set_sieve_buf_size(0)
    fapl.set_cache(0, 0, 0, 0.75)
    last: Exception | None = None
    for attempt in range(_LIVE_OPEN_ATTEMPTS):
        try:
            return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY, fapl=fapl))
        except OSError as e:
            last = e
            time.sleep(_LIVE_OPEN_RETRY_S * (attempt > 0))
    raise StorageError(
        f"cannot open {path} while it is being written: {_first_line(last or OSError('unknown'))}"
    )


_WRITER_CACHE: dict[str, int] = {"rdcc_nbytes": 0}


def _open_h5(path: Path, mode: str) -> h5py.File:
    if not path.is_file():
        raise StorageError(f"scan file not found: {path}")
    try:
        # a writer writes each tile as one whole chunk: HDF5's chunk cache would only hold
        # copies of written tiles (1 MB per section's dataset)
        return h5py.File(path, mode, **({} if mode == "r" else _WRITER_CACHE))
    except BlockingIOError as e:
        raise _FileLocked(
            f"cannot open {path}: it is locked, probably open for writing by a running scan ({e})"
        ) from e
    except OSError as e:
        if "file locking flag values don't match" in str(e):
            # this process already has the file open live (see _open_live)
            raise _FileLocked(f"cannot open {path}: it is open live in this process") from e
        stored_eof = _superblock_eof(path)
        if stored_eof is not None and stored_eof > path.stat().st_size:
            raise StorageError(
                f"cannot open {path}: it is {stored_eof - path.stat().st_size} bytes short, left so by a "
                "write that failed (e.g. on a full disk); ScanWriter.open_for_resume repairs it"
            ) from e
        raise StorageError(f"cannot open {path}: not a readable HDF5 file ({_first_line(e)})") from e


def _check_live_readable(f: h5py.File, path: Path) -> None:
    """Refuse live reading of compressed tiles: their chunks are allocated as written."""
    for sid, g in f["sections"].items():
        if g["tiles"].compression is not None:
            raise StorageError(
                f"cannot read {path} while it is being written: its tiles are compressed "
                f"({g['tiles'].compression}, section {sid}); open it once the scan has finished"
            )


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _superblock_eof(path: Path) -> int | None:
    """End-of-file address recorded in an HDF5 superblock at offset 0 (None if not readable)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError:
        return None
    if len(head) < 64 or head[:8] != _HDF5_SIGNATURE:
        return None
    version = head[8]
    if version in (0, 1):  # fields: see the HDF5 file format specification, "Superblock"
        offset_size, base = head[13], (24 if version == 0 else 28)
    elif version in (2, 3):
        offset_size, base = head[9], 12
    else:
        return None
    if offset_size not in (4, 8):
        return None
    eof_at = base + 2 * offset_size  # after the base address and one more address
    return int.from_bytes(head[eof_at : eof_at + offset_size], "little")


def _restore_length(path: Path) -> int:
    """Pad a file shorter than its superblock says with zeros (HDF5 refuses it); return the bytes added.

    A write that fails for lack of space can leave HDF5's superblock
    recording an end of file beyond the data actually stored.
    """
    if not path.is_file():
        return 0
    stored_eof = _superblock_eof(path)
    size = path.stat().st_size
    if stored_eof is None or stored_eof <= size:
        return 0
    try:
        os.truncate(path, stored_eof)
    except OSError as e:
        raise StorageError(f"cannot repair {path} (restore its length to {stored_eof} bytes): {e}") from e
    return stored_eof - size


#: Zeros appended by :func:`_extend_allocation` beyond everything a crash may have left referenced.
_REPAIR_MARGIN_BYTES = 1024**2


def _extend_allocation(path: Path, end_bytes: int) -> int | None:
    """Make HDF5 count the first ``end_bytes`` (padded with zeros) as allocated; return the new end.

    A crash or failed write in the middle of HDF5's flush can leave data
    written (or claimed, e.g. a grown string heap or a new chunk) beyond the
    end of file recorded in the superblock, which HDF5 then refuses to read
    (done tiles' metadata included) and would later overwrite with new
    objects. Raising the recorded end of file past all of it makes it
    readable and keeps new objects clear of it. Only superblock versions 0
    and 1 (HDF5's default format; no checksum) are patched; returns None
    for others.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    if len(head) < 16 or head[:8] != _HDF5_SIGNATURE or head[8] not in (0, 1) or head[13] != 8:
        return None
    eof_at = (24 if head[8] == 0 else 28) + 2 * 8
    try:
        if path.stat().st_size < end_bytes:
            os.truncate(path, end_bytes)
        with path.open("r+b") as fh:
            fh.seek(eof_at)
            fh.write(int(end_bytes).to_bytes(8, "little"))
    except OSError as e:
        raise StorageError(f"cannot repair {path} (extend it to {end_bytes} bytes): {e}") from e
    return end_bytes


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


def _write_section(sections: h5py.Group, layout: SectionLayout, compression: str | None) -> None:
    n, c, z = layout.n_tiles, len(layout.channel_names), layout.n_z
    h, w = layout.tile_shape_px
    g = sections.create_group(layout.section_id)
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
    g.create_group("analysis")


# ------------------------------------------------------------------------ writer


@dataclass
class _OpenSection:
    group: h5py.Group
    tiles: h5py.Dataset
    tile_z_um: h5py.Dataset
    tile_status: h5py.Dataset
    tile_meta: h5py.Dataset
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
        # (section, tile) -> {(channel, z)} images written by this writer
        self._written: dict[tuple[str, int], set[tuple[int, int]]] = {}
        for sid, g in file["sections"].items():
            ds = {name: g[name] for name in _SECTION_DATASETS}
            self._sections[sid] = _OpenSection(
                group=g,
                tiles=ds["tiles"],
                tile_z_um=ds["tile_z_um"],
                tile_status=ds["tile_status"],
                tile_meta=ds["tile_meta"],
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
                f"scan file {path} already exists; resume it (ScanWriter.open_for_resume) "
                "or pass overwrite=True to replace it and lose its tiles"
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
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # refuses to replace a file that appeared meanwhile
                tmp.unlink()
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot create scan file {path}: {e}") from e
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
        repairs = _repair_file_ends(path)
        f = _open_h5(path, "r+")
        try:
            _check_format(f, path)
            repairs.update(_recover(f))
            writer = cls(f, path)
        except BaseException:
            f.close()
            raise
        if repairs:
            logger.warning("%s: repaired what an interrupted write left behind: %s", path, repairs)
            writer.log_event("repair", **repairs)
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
        """Section ids in file order."""
        return tuple(self._sections)

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

    def tile_status_array(self, section_id: str) -> np.ndarray:
        """Status of every tile of a section, ``(n_tiles,)`` uint8 (a copy; see :class:`TileStatus`)."""
        return self._section(section_id).status.copy()

    def tile_status(self, section_id: str, tile_index: int) -> TileStatus:
        """Status of one tile."""
        sec = self._section(section_id)
        self._check_tile(section_id, sec, tile_index)
        return TileStatus(int(sec.status[tile_index]))

    def pending_tiles(self) -> dict[str, np.ndarray]:
        """Return the indices of the tiles not done (pending or failed) per section, for resume."""
        return {
            sid: np.flatnonzero(sec.status != TileStatus.DONE).astype(np.int64)
            for sid, sec in self._sections.items()
        }

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
            with self._writing(f"tile {section_id}/{tile_index}", nbytes=2 * h * w):
                sec.tiles[tile_index, channel_index, z_index] = np.ascontiguousarray(arr, dtype=np.uint16)
            self._written.setdefault((section_id, tile_index), set()).add((channel_index, z_index))

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
            with self._writing(f"tile {section_id}/{tile_index}", nbytes=len(meta_json)):
                sec.tile_z_um[tile_index] = float(z_um)
                sec.tile_meta[tile_index] = meta_json
                self._file.flush()
                self._set_status(sec, tile_index, TileStatus.DONE)
                self._file.flush()
            sec.status[tile_index] = TileStatus.DONE
            self._written.pop((section_id, tile_index), None)

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
            sec.status[tile_index] = TileStatus.FAILED
            self._append_event(
                "tile_failed", {"section": section_id, "tile": int(tile_index), "reason": reason}
            )

    def log_event(self, kind: str, **fields: Any) -> None:
        """Append ``{"time": iso, "kind": kind, **fields}`` to ``/events`` and flush.

        Kinds in use: ``start``, ``finish``, ``cancel``, ``pause``, ``resume``,
        ``retry``, ``fault``, ``tile_failed``, ``repair``.
        """
        with self._owned():
            self._append_event(kind, fields)

    def _append_event(self, kind: str, fields: Mapping[str, Any]) -> None:
        if {"time", "kind"} & set(fields):
            raise StorageError("event fields may not be named 'time' or 'kind'")
        text = _to_json({"time": _now_iso(), "kind": kind, **fields})
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


# ------------------------------------------------------------------- recovery

_REBUILD_SUFFIX = ".rebuilding"


def _read_strings(ds: h5py.Dataset) -> tuple[list[str | None], bool]:
    """Read a 1-D string dataset; ``None`` for entries a crash left unreadable; and whether all were readable.

    A crash while HDF5 flushes can leave an entry pointing at string storage
    (or a chunk) that HDF5 had not yet written.
    """
    try:
        return list(ds.asstr()[()]), True
    except (OSError, RuntimeError) as e:
        logger.info("%s: some entries are unreadable (%s); reading them one by one", ds.name, e)
    values: list[str | None] = []
    for i in range(ds.shape[0]):
        try:
            values.append(ds.asstr()[i])
        except (OSError, RuntimeError):
            values.append(None)
    return values, False


def _rebuild_strings(group: h5py.Group, name: str, values: Sequence[str], *, resizable: bool) -> None:
    """Replace a string dataset by a fresh one holding ``values``.

    Overwriting an unreadable entry in place fails (HDF5 first frees the
    string it points to), so the dataset is rebuilt: written under a
    temporary name, flushed, then swapped in (see :func:`_finish_rebuild`).
    """
    tmp = name + _REBUILD_SUFFIX
    if tmp in group:
        del group[tmp]
    if resizable:
        group.create_dataset(tmp, data=list(values), dtype=_STR, maxshape=(None,), chunks=(256,))
    else:
        group.create_dataset(tmp, data=list(values), dtype=_STR)
    group.file.flush()
    del group[name]
    group.move(tmp, name)
    group.file.flush()


def _finish_rebuild(group: h5py.Group, name: str) -> None:
    """Complete or drop a rebuild of ``name`` that a crash interrupted."""
    tmp = name + _REBUILD_SUFFIX
    if tmp not in group:
        return
    if name in group:  # the new copy may be incomplete: drop it, the old one is still whole
        del group[tmp]
    else:
        group.move(tmp, name)
    group.file.flush()


def _chunk_ends(tiles: h5py.Dataset) -> dict[tuple[int, int, int], int]:
    """End address of each allocated image chunk, by ``(tile, channel, z)``."""
    ends: dict[tuple[int, int, int], int] = {}

    def visit(info: Any) -> None:
        if info.byte_offset is not None:
            t, c, z = (int(v) for v in info.chunk_offset[:3])
            ends[(t, c, z)] = int(info.byte_offset + info.size)

    tiles.id.chunk_iter(visit)
    return ends


def _repair_file_ends(path: Path) -> dict[str, int]:
    """Fix the end of a scan file that a crash or failed write left inconsistent.

    Done with plain file I/O, before HDF5 opens the file for writing: HDF5
    keeps a file's state across close and reopen in one process once a read
    of it has failed, so the file must be right before the first such read.

    - Shorter than its superblock records (a failed write): padded with
      zeros, else HDF5 refuses it.
    - Data written (or claimed: a grown string heap, a new chunk) beyond the
      recorded end (a crash or failed write in the middle of HDF5's flush):
      the recorded end is raised past it (:func:`_extend_allocation`).

    Returns
    -------
    dict
        ``padded_bytes`` and ``end_of_file_bytes`` if changed.
    """
    if not path.is_file():
        raise StorageError(f"scan file not found: {path}")
    repairs: dict[str, int] = {}
    size, stored_eof = path.stat().st_size, _superblock_eof(path)
    if stored_eof is None:
        return repairs  # not HDF5 (or an unknown superblock): opening it will say what is wrong
    padded = _restore_length(path)
    try:
        with _open_h5(path, "r") as f:
            _check_format(f, path)
            highest_chunk_end = max(
                [0, *(end for g in f["sections"].values() for end in _chunk_ends(g["tiles"]).values())]
            )
    except BaseException:
        if padded:  # not ours to repair: leave it as it was
            os.truncate(path, size)
        raise
    if padded:
        repairs["padded_bytes"] = padded
    if size != stored_eof or highest_chunk_end > stored_eof:
        end = max(size, stored_eof, highest_chunk_end) + _REPAIR_MARGIN_BYTES
        if _extend_allocation(path, end) is not None:
            repairs["end_of_file_bytes"] = end
    return repairs


def _recover(f: h5py.File) -> dict[str, Any]:
    """Rebuild what a crash or failed write left unreadable, so the scan can resume.

    The write order keeps done tiles whole; what can be broken is the state
    of the tile being written when the writer stopped and the newest events
    (their entries point at storage HDF5 had not yet written):

    - unreadable ``tile_meta`` entries are cleared (the dataset is rebuilt,
      see :func:`_rebuild_strings`); such a tile that was done (not
      expected) is made pending again, as is a done tile with a missing
      image chunk;
    - unreadable ``/events`` entries are dropped.

    Returns
    -------
    dict
        What was repaired, for the ``repair`` event; empty if nothing.
    """
    repairs: dict[str, Any] = {}
    demoted: list[str] = []
    cleared: list[str] = []
    for sid, g in f["sections"].items():
        _finish_rebuild(g, "tile_meta")
        status = g["tile_status"]
        metas, readable = _read_strings(g["tile_meta"])
        bad = {i for i, m in enumerate(metas) if m is None}
        if not readable:
            _rebuild_strings(g, "tile_meta", [m or "" for m in metas], resizable=False)
            cleared += [f"{sid}/{i}" for i in sorted(bad)]
        ends = _chunk_ends(g["tiles"])
        n_c, n_z = g["tiles"].shape[1:3]
        for t in np.flatnonzero(status[()] == TileStatus.DONE):
            whole = all((int(t), c, z) in ends for c in range(n_c) for z in range(n_z))
            if int(t) in bad or not whole:
                status[t] = np.uint8(TileStatus.PENDING)
                demoted.append(f"{sid}/{t}")
    _finish_rebuild(f, "events")
    events, readable = _read_strings(f["events"])
    if not readable:
        kept = [e for e in events if e]
        _rebuild_strings(f, "events", kept, resizable=True)
        repairs["events_dropped"] = len(events) - len(kept)
    if cleared:
        repairs["tile_meta_cleared"] = cleared
    if demoted:
        repairs["tiles_made_pending"] = demoted
    f.flush()
    return repairs


# --------------------------------------------------------------- MDA adapter


@dataclass
class _TileInProgress:
    frames: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)


class MDAWriterOutput:
    """pymmcore-plus MDA output that saves each frame into a :class:`ScanWriter`.

    Pass it to ``core.mda.run(sequence, output=MDAWriterOutput(writer))``.
    The sequence says which frame belongs where: ``sequence.metadata
    ["cordscope"]["tiles"]`` is a list of ``[section_id, tile_index, x_um,
    y_um]``, one per stage position (``event.index["p"]``); the channel index
    is ``event.index["c"]`` and the plane ``event.index["z"]`` (0 if absent).
    Once all channel × z images of a tile arrived, the tile is completed
    (:meth:`ScanWriter.complete_tile`) with:

    - ``tile_z_um``: the focus used, i.e. the mean z of the first channel's
      planes (the plane's z when ``n_z == 1``), each taken from the frame
      metadata's ``position["z"]`` if present, else ``event.z_pos``;
    - ``tile_meta``: planned and actual XY, exposure per channel, and per
      frame its channel, plane, z, exposure, runner time and write time.

    Frames of tiles that are already done are skipped (resume). Storage
    errors cannot propagate out of the runner's relay thread; they are
    logged, kept in :attr:`errors` and passed to ``on_error`` (e.g. to cancel
    the acquisition); the tile concerned stays pending.

    Parameters
    ----------
    writer : ScanWriter
        Open writer; the caller closes it after the run.
    on_error : callable, optional
        Called with each :class:`StorageError` (from the runner's relay thread).
    on_tile_done : callable, optional
        ``f(section_id, tile_index)``, called once a tile is complete on disk.
    """

    def __init__(
        self,
        writer: ScanWriter,
        *,
        on_error: Callable[[StorageError], None] | None = None,
        on_tile_done: Callable[[str, int], None] | None = None,
    ) -> None:
        self._writer = writer
        self._on_error = on_error
        self._on_tile_done = on_tile_done
        self._tiles: list[tuple[str, int, float, float]] | None = None
        self._sequence_uid: str | None = None
        self._mapping_error: StorageError | None = None
        self._in_progress: dict[tuple[str, int], _TileInProgress] = {}
        self._skipped: set[tuple[str, int]] = set()
        self.errors: list[StorageError] = []
        """Storage errors met during the run, in order."""

    # -------------------------------------------------------------- callbacks

    def sequenceStarted(self, sequence: useq.MDASequence, meta: Mapping[str, Any] | None = None) -> None:
        """Read the tile mapping from the sequence and log a ``start`` event."""
        self._in_progress.clear()
        self._skipped.clear()
        self._tiles = None
        self._mapping_error = None
        self._sequence_uid = str(sequence.uid)
        try:
            self._tiles = self._tile_mapping(sequence)
        except StorageError as e:
            self._mapping_error = e
            self._report(e)
            return
        self._log("start", sequence_uid=self._sequence_uid, n_positions=len(self._tiles))

    def frameReady(self, img: np.ndarray, event: useq.MDAEvent, meta: Mapping[str, Any]) -> None:
        """Write one frame; complete its tile once all its frames arrived."""
        if self._mapping_error is not None:
            return  # reported once in sequenceStarted; no frame can be placed
        try:
            self._frame_ready(img, event, meta)
        except StorageError as e:
            self._report(e)

    def sequencePauseToggled(self, paused: bool) -> None:
        """Log a ``pause`` or ``resume`` event."""
        self._log("pause" if paused else "resume")

    def sequenceCanceled(self, sequence: useq.MDASequence) -> None:
        """Log a ``cancel`` event."""
        self._log("cancel", sequence_uid=str(sequence.uid))

    def sequenceFinished(self, sequence: useq.MDASequence) -> None:
        """Log a ``finish`` event naming tiles left incomplete (they stay pending)."""
        incomplete = [f"{sid}/{t}" for sid, t in sorted(self._in_progress)]
        self._in_progress.clear()
        self._log("finish", sequence_uid=str(sequence.uid), incomplete_tiles=incomplete)

    # ---------------------------------------------------------------- helpers

    def _log(self, kind: str, **fields: Any) -> None:
        try:
            self._writer.log_event(kind, **fields)
        except StorageError as e:
            self._report(e)

    def _report(self, error: StorageError) -> None:
        logger.error("%s", error)
        self.errors.append(error)
        if self._on_error is not None:
            self._on_error(error)

    def _tile_mapping(self, sequence: useq.MDASequence) -> list[tuple[str, int, float, float]]:
        try:
            raw = sequence.metadata["cordscope"]["tiles"]
            tiles = [(str(sid), int(t), float(x), float(y)) for sid, t, x, y in raw]
        except (KeyError, TypeError, ValueError) as e:
            raise StorageError(
                "the MDA sequence's metadata['cordscope']['tiles'] must list "
                f"[section_id, tile_index, x_um, y_um] per stage position ({type(e).__name__}: {e})"
            ) from e
        for sid, t, x, y in tiles:
            planned = self._writer.tile_xy_um(sid)  # raises for an unknown section
            if not 0 <= t < planned.shape[0]:
                raise StorageError(
                    f"sequence names tile {sid}/{t}, but section {sid} has {planned.shape[0]} tiles"
                )
            if not np.allclose(planned[t], (x, y), rtol=0, atol=1e-3):
                raise StorageError(
                    f"sequence places tile {sid}/{t} at ({x}, {y}) µm, but the scan file plans it at "
                    f"({planned[t][0]}, {planned[t][1]}) µm"
                )
        return tiles

    def _frame_ready(self, img: np.ndarray, event: useq.MDAEvent, meta: Mapping[str, Any]) -> None:
        if self._tiles is None:
            seq = getattr(event, "sequence", None)
            if seq is None:
                raise StorageError(f"frame {dict(event.index)} arrived without a sequence tile mapping")
            self._tiles = self._tile_mapping(seq)
        index = dict(event.index)
        extra_axes = {ax: i for ax, i in index.items() if ax not in {"p", "c", "z"} and i}
        if extra_axes or "p" not in index:
            raise StorageError(
                f"frame {index}: MDAWriterOutput needs one stage position per tile (axis 'p') and "
                f"supports only axes p, c, z (got {extra_axes or 'no p axis'})"
            )
        p = int(index["p"])
        if not 0 <= p < len(self._tiles):
            raise StorageError(f"frame {index}: position {p} has no entry in metadata['cordscope']['tiles']")
        sid, tile, x_um, y_um = self._tiles[p]
        c, z = int(index.get("c", 0)), int(index.get("z", 0))
        key = (sid, tile)
        if self._writer.tile_status(sid, tile) == TileStatus.DONE:
            if key not in self._skipped:
                self._skipped.add(key)
                logger.info("tile %s/%s is already done in %s; frames skipped", sid, tile, self._writer.path)
            return
        channels = self._writer.channel_names(sid)
        if event.channel is not None and c < len(channels) and event.channel.config != channels[c]:
            raise StorageError(
                f"frame {index}: channel {event.channel.config!r} is channel {c} in the sequence, "
                f"but section {sid} stores {channels[c]!r} as channel {c}"
            )
        position = meta.get("position") or {}
        z_used = position.get("z", event.z_pos)
        z_used = float("nan") if z_used is None else float(z_used)
        self._writer.write_image(sid, tile, c, z, img)
        progress = self._in_progress.setdefault(key, _TileInProgress())
        progress.frames[(c, z)] = {
            "channel": channels[c],
            "c": c,
            "z": z,
            "z_um": z_used,
            "exposure_ms": meta.get("exposure_ms", event.exposure),
            "runner_time_ms": meta.get("runner_time_ms"),
            "time": _now_iso(),
            "position": position or None,
        }
        _, n_c, n_z, _, _ = self._writer.section_shape(sid)
        if len(progress.frames) < n_c * n_z:
            return
        del self._in_progress[key]
        frames = [progress.frames[k] for k in sorted(progress.frames)]
        first_z = [f["z_um"] for f in frames if f["c"] == 0]
        first_pos = frames[0]["position"] or {}
        actual_xy = [first_pos["x"], first_pos["y"]] if {"x", "y"} <= set(first_pos) else None
        tile_meta = {
            "planned_xy_um": [x_um, y_um],
            "actual_xy_um": actual_xy,
            "exposure_ms": {f["channel"]: f["exposure_ms"] for f in frames},
            "mda_sequence_uid": self._sequence_uid,
            "frames": frames,
        }
        self._writer.complete_tile(sid, tile, z_um=float(np.mean(first_z)), meta=tile_meta)
        if self._on_tile_done is not None:
            self._on_tile_done(sid, tile)


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

    def __init__(self, group: h5py.Group, *, live: bool = False) -> None:
        self._group = group
        self._live = live
        self.section_id: str = group.name.rsplit("/", 1)[-1]

    @property
    def attrs(self) -> dict[str, Any]:
        """Section attributes, JSON ones decoded; standard ones ``None`` when absent."""
        raw = {k: _decode_attr(v) for k, v in self._group.attrs.items()}
        json_names = set(json.loads(raw.pop("json_attrs", "[]"))) | {"channel_names"}
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
                    f"is unreadable ({_first_line(e)}); ScanWriter.open_for_resume repairs the file"
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
            if live:
                _check_live_readable(f, path)
        except BaseException:
            f.close()
            raise
        return cls(f, path, version, live=live)

    def refresh(self) -> None:
        """Reopen the file to see what a running scan wrote since (metadata and events included)."""
        self.close()  # first: HDF5 would hand back the same open file, with its cached metadata
        reopened = ScanFile.open(self.path)
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

    def section(self, section_id: str) -> SectionReader:
        """One section."""
        try:
            return SectionReader(self._file["sections"][section_id], live=self.live)
        except KeyError:
            raise StorageError(
                f"{self.path} has no section {section_id!r} (sections: {', '.join(self.section_ids)})"
            ) from None

    def events(self) -> list[dict[str, Any]]:
        """Return the logged events, oldest first.

        Entries the writer was writing when it stopped (empty or unreadable)
        are left out.
        """
        return [json.loads(text) for text in _read_strings(self._file["events"])[0] if text]

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
