"""The scan file's format: names, versions, status values, JSON helpers and safe opening.

See the package docstring (:mod:`acquisition.storage`) for the layout and the crash-safety contract.
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
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import CordScopeError

try:
    import fcntl
except ImportError:  # Windows: HDF5 locks differently; the check is skipped
    fcntl = None  # type: ignore[assignment]

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
_LAYOUT_ATTRS = frozenset({"channel_names", "pixel_size_um", "pixel_affine_um", "tile_size_um", "json_attrs"})
_SECTION_DATASETS = ("tiles", "tile_xy_um", "tile_z_um", "tile_status", "tile_meta")
#: Per image CRC-32 of its pixels (little-endian uint16 bytes); -1: none (pending, or written
#: before checksums existed). Optional: files without it read as unverified.
TILE_CRC_DATASET = "tile_crc32"
NO_CRC = -1


def image_crc32(image: np.ndarray) -> int:
    """CRC-32 (zlib) of an image's pixels as the scan file stores them: C-ordered little-endian uint16."""
    return zlib.crc32(np.ascontiguousarray(image, dtype="<u2").data) & 0xFFFFFFFF


_STR = h5py.string_dtype("utf-8")


#: Sub-group of a section holding its further passes (e.g. ``passes/20x``, an adaptive pass).
PASSES_GROUP = "passes"
#: Attribute set last when a pass is created: a pass without it was interrupted while being made.
_PASS_COMPLETE_ATTR = "pass_complete"
#: Separator of a pass key: ``<section id>@<pass name>`` (``@`` is not allowed in section ids).
PASS_SEPARATOR = "@"


def pass_key(section_id: str, pass_name: str) -> str:
    """The key of a section's pass, as a writer, reader, tile name and ``TileStored`` use it: ``S01@20x``."""
    return f"{section_id}{PASS_SEPARATOR}{pass_name}"


def split_pass_key(key: str) -> tuple[str, str | None]:
    """``(section_id, pass name or None)`` of a key (a section id, or a :func:`pass_key`)."""
    section_id, sep, name = key.partition(PASS_SEPARATOR)
    return (section_id, name) if sep else (key, None)


def _tile_groups(f: h5py.File, *, incomplete: bool = False) -> list[tuple[str, h5py.Group]]:
    """Every group holding tiles: each section, then its complete passes, as ``(key, group)``."""
    out: list[tuple[str, h5py.Group]] = []
    for sid, g in f["sections"].items():
        out.append((sid, g))
        passes = g.get(PASSES_GROUP)
        if isinstance(passes, h5py.Group):
            for name, pg in passes.items():
                if incomplete or pg.attrs.get(_PASS_COMPLETE_ATTR, 0):
                    out.append((pass_key(sid, name), pg))
    return out


class StorageError(CordScopeError):
    """A scan file cannot be created, opened, read or written; the message says which and why."""


class NeedsRepair(StorageError):
    """A scan file that resuming repairs (cut short by a failed write, a status byte out of range)."""


class _FileLocked(StorageError):
    """The file is locked by a writer (another process has it open for writing)."""


def tile_name(section_id: str, tile_index: int) -> str:
    """A tile's name in every CordScope output: ``<section>/<tile>``, the tile number with 4 digits."""
    return f"{section_id}/{int(tile_index):04d}"


def parse_tile_name(name: str) -> tuple[str, int]:
    """``(section_id, tile_index)`` of a tile name (``rat01-Th7/0005``; ``rat01-Th7/5`` is read too).

    Raises
    ------
    ValueError
        If ``name`` is not ``<section>/<number>``.
    """
    section_id, _, index = name.rpartition("/")
    if not section_id or not index.isdigit():
        raise ValueError(f"{name!r} is not a tile name '<section>/<tile number>'")
    return section_id, int(index)


class EventKind(StrEnum):
    """Kinds of ``/events`` entries (the ``kind`` key of each JSON object)."""

    NEW_SCAN = "new_scan"
    """A scan file was created and its run is about to start."""
    RESUME_SCAN = "resume_scan"
    """An existing scan file is continued."""
    REPAIR = "repair"
    """What a crash or a failed write left behind was repaired before resuming."""
    START = "start"
    """An acquisition run (one MDA sequence) started."""
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    """The run was asked to stop after the current image."""
    RUN_END = "run_end"
    """The run ended; ``incomplete_tiles`` lists tiles that had only some of their images."""
    TILE_FAILED = "tile_failed"
    """A tile was marked failed after its retries."""
    TILE_RETRIED = "tile_retried"
    """A device call of a tile failed and was retried, and the tile was then stored."""
    TILE_RETAKEN = "tile_retaken"
    """A tile was blurred, refocused and imaged again (``retake``: decision, scores, focus, time)."""
    ADAPTIVE_PASS = "adaptive_pass"
    """A second pass at another objective was added (``objective``, tiles per section)."""
    FINISHED = "finished"
    """The scan ended with its run complete (some tiles may have failed)."""
    STOPPED = "stopped"
    """The scan stopped early (abort, dead device, storage error); the file is resumable."""


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


def _decode_text(value: Any) -> Any:
    """An HDF5 attribute or scalar string as ``str`` (bytes decoded); anything else as it is."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


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


def touches_file(
    target: str | os.PathLike[str], protected: str | os.PathLike[str], *, inside: bool = True
) -> bool:
    """Whether writing, replacing or deleting ``target`` would touch the file ``protected``.

    True when both name the same file (also through links or ``..``), or, with
    ``inside``, when ``protected`` lies inside ``target`` (a folder an export
    would replace). A command checks its outputs against its inputs with this
    before writing.
    """
    t, p = Path(target).expanduser(), Path(protected).expanduser()
    t_abs, p_abs = t.resolve(), p.resolve()
    if t_abs == p_abs or (inside and t_abs in p_abs.parents):
        return True
    try:  # the same file under two names (a hard link, a bind mount)
        return t.exists() and p.exists() and os.path.samefile(t, p)
    except OSError:  # vanished or unreadable between the checks: not the same file as far as we can see
        return False


def required_free_bytes(bytes_to_write: int) -> int:
    """Free disk a scan needs to write ``bytes_to_write`` more bytes of tiles: the writer's own rule.

    The writer refuses any write that would leave less than
    :data:`FREE_SPACE_RESERVE_BYTES` free, so a whole scan needs its tile
    data plus that reserve; plan validation asks for the same (with
    :data:`HDF5_OVERHEAD` for metadata) so a plan that validates never meets
    "disk full" on its first tile.
    """
    return math.ceil(max(bytes_to_write, 0) * HDF5_OVERHEAD) + FREE_SPACE_RESERVE_BYTES


#: Extra space per byte of tiles for HDF5's metadata, tile metadata, events and analysis results.
HDF5_OVERHEAD = 1.1


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on an existing file, as HDF5 locks a file it writes; yields whether it was free.

    Yields False (without waiting) when another process (or another open
    file in this one) holds a lock on it: a running scan writing it, or a
    program reading it with HDF5's locks. Yields True (and holds the lock
    for the block) otherwise, also where the system has no such locks.
    """
    if fcntl is None or not path.is_file():
        yield True
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:  # a file system without flock: nothing to learn
            yield True
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def in_use(path: str | os.PathLike[str]) -> bool:
    """Whether another program holds the file open with a lock (e.g. a running scan writes it)."""
    with exclusive_lock(Path(path)) as free:
        return not free


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _planned_z(group: h5py.Group) -> np.ndarray:
    if "planned_tile_z_um" in group:
        return np.asarray(group["planned_tile_z_um"][()], dtype=np.float64)
    return np.full(group["tiles"].shape[0], np.nan)


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


_DAMAGED = "the file is damaged or was edited"


def _damaged(path: Path, what: str) -> StorageError:
    return StorageError(f"{path}: {what}; {_DAMAGED}")


def _check_structure(f: h5py.File, path: Path, *, statuses: bool = True) -> None:
    """Refuse a scan file that lacks what every reader needs, naming the first thing missing.

    Checks the root's datasets and attributes, and per section the datasets
    (present, shapes that agree), the ``channel_names`` and
    ``pixel_size_um`` attributes and, with ``statuses``, that every
    ``tile_status`` byte is 0, 1 or 2 (resuming repairs other values
    instead: see :func:`acquisition.storage.repair._recover`).

    Raises
    ------
    StorageError
        One line naming the file, the object and what is wrong with it.
    """
    for name in ("created", "software_json"):
        if name not in f.attrs:
            raise _damaged(path, f"the root has no {name!r} attribute")
    for name, kind in (("plan", h5py.Dataset), ("hardware", h5py.Group), ("sections", h5py.Group)):
        if not isinstance(f.get(name), kind):
            raise _damaged(path, f"no {name!r} {'dataset' if kind is h5py.Dataset else 'group'}")
    if not isinstance(f.get("events"), h5py.Dataset):
        raise _damaged(path, "no 'events' dataset")
    for sid, g in f["sections"].items():
        if not isinstance(g, h5py.Group):
            raise _damaged(path, f"sections/{sid} is not a group")
        for name in _SECTION_DATASETS:
            if not isinstance(g.get(name), h5py.Dataset):
                raise _damaged(path, f"section {sid} has no {name!r} dataset")
        tiles = g["tiles"]
        if tiles.ndim != 5:
            raise _damaged(path, f"section {sid}: 'tiles' has {tiles.ndim} dimensions, not 5")
        n = tiles.shape[0]
        expected = {"tile_xy_um": (n, 2), "tile_z_um": (n,), "tile_status": (n,), "tile_meta": (n,)}
        if "planned_tile_z_um" in g:
            expected["planned_tile_z_um"] = (n,)
        if TILE_CRC_DATASET in g:
            expected[TILE_CRC_DATASET] = tuple(int(v) for v in tiles.shape[:3])
        for name, shape in expected.items():
            if g[name].shape != shape:
                raise _damaged(path, f"section {sid}: {name!r} has shape {g[name].shape}, not {shape}")
        try:
            channels = json.loads(_text_attr(g.attrs["channel_names"]))
            if not isinstance(channels, list) or len(channels) != tiles.shape[1]:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise _damaged(
                path, f"section {sid}: no valid 'channel_names' attribute ({tiles.shape[1]} channels)"
            ) from None
        try:
            pixel_size = float(g.attrs["pixel_size_um"])
            if not (math.isfinite(pixel_size) and pixel_size > 0):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise _damaged(path, f"section {sid}: no valid 'pixel_size_um' attribute") from None
        if statuses:
            bad = _bad_statuses(g["tile_status"][()])
            if bad.size:
                t = int(bad[0])
                raise NeedsRepair(
                    f"{path}: tile {tile_name(sid, t)} has status {int(g['tile_status'][t])} (0 pending, "
                    f"1 done, 2 failed; {bad.size} such tiles); {_DAMAGED}: cordscope scan --resume "
                    f"{path} makes them pending and acquires them"
                )


@dataclass(frozen=True)
class TileCheck:
    """What checking the done tiles of a section against their stored checksums found.

    Attributes
    ----------
    verified : int
        Done tiles whose every image matches its CRC-32.
    damaged : tuple of int
        Done tiles with an image that does not match (or cannot be read).
    unverified : int
        Done tiles without a checksum (written before checksums existed).
    """

    verified: int
    damaged: tuple[int, ...]
    unverified: int


def check_done_tiles(group: h5py.Group, *, progress: Callable[[int], None] | None = None) -> TileCheck:
    """Read every done tile of a section (an open ``sections/<id>`` group) and compare its checksums.

    ``progress(tile_index)`` is called after each tile read.
    """
    status = np.asarray(group["tile_status"][()])
    done = np.flatnonzero(status == TileStatus.DONE)
    crcs = group.get(TILE_CRC_DATASET)
    stored = np.asarray(crcs[()]) if crcs is not None else None
    tiles = group["tiles"]
    verified, unverified = 0, 0
    damaged: list[int] = []
    for index in done:
        t = int(index)
        if stored is None or (stored[t] == NO_CRC).any():
            unverified += 1
        else:
            try:
                images = np.asarray(tiles[t])
                ok = all(
                    image_crc32(images[c, z]) == int(stored[t, c, z])
                    for c in range(images.shape[0])
                    for z in range(images.shape[1])
                )
            except (OSError, RuntimeError):  # unreadable pixels are damaged pixels
                ok = False
            if ok:
                verified += 1
            else:
                damaged.append(t)
        if progress is not None:
            progress(t)
    return TileCheck(verified, tuple(damaged), unverified)


def _bad_statuses(status: np.ndarray) -> np.ndarray:
    """Indices of status bytes that are not a :class:`TileStatus`."""
    return np.flatnonzero(~np.isin(status, [int(v) for v in TileStatus]))


def _text_attr(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


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
            raise NeedsRepair(
                f"cannot open {path}: it is {stored_eof - path.stat().st_size} bytes short, left so by a "
                f"write that failed (e.g. on a full disk) or a copy cut short; resuming the scan repairs "
                f"what can be repaired: cordscope scan --resume {path}"
            ) from e
        raise StorageError(f"cannot open {path}: not a readable HDF5 file ({_first_line(e)})") from e


def _check_live_readable(f: h5py.File, path: Path) -> None:
    """Refuse live reading of compressed tiles: their chunks are allocated as written."""
    for sid, g in _tile_groups(f):
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
