"""Repairing what a crash or a failed write left in a scan file, before it is written again."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .format import (
    _HDF5_SIGNATURE,
    _PASS_COMPLETE_ATTR,
    _STR,
    PASSES_GROUP,
    StorageError,
    TileStatus,
    _bad_statuses,
    _check_format,
    _check_structure,
    _open_h5,
    _superblock_eof,
    _tile_groups,
    check_done_tiles,
    split_pass_key,
    tile_name,
)

logger = logging.getLogger(__name__)


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
        ``padded_bytes`` (and ``lost_from_byte``, where the zeros start) and
        ``end_of_file_bytes`` if changed.
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
            _check_structure(f, path, statuses=False)
            highest_chunk_end = max(
                [0, *(end for _, g in _tile_groups(f) for end in _chunk_ends(g["tiles"]).values())]
            )
    except BaseException as e:
        if padded:  # not ours to repair: leave it as it was
            os.truncate(path, size)
            if isinstance(e, StorageError):
                raise StorageError(
                    f"cannot repair {path}: it is {padded} bytes short and what remains cannot be read ({e})"
                ) from e
        raise
    if padded:
        repairs["padded_bytes"] = padded
        repairs["lost_from_byte"] = size
    if size != stored_eof or highest_chunk_end > stored_eof:
        end = max(size, stored_eof, highest_chunk_end) + _REPAIR_MARGIN_BYTES
        if _extend_allocation(path, end) is not None:
            repairs["end_of_file_bytes"] = end
    return repairs


def _complete_pass(key: str, g: h5py.Group) -> bool:
    return split_pass_key(key)[1] is None or bool(g.attrs.get(_PASS_COMPLETE_ATTR, 0))


def _storage_ranges(ds: h5py.Dataset) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of a dataset's raw data in the file (empty if not allocated)."""
    if ds.chunks is None:
        offset = ds.id.get_offset()
        return [] if offset is None else [(int(offset), int(offset) + int(ds.id.get_storage_size()))]
    ranges: list[tuple[int, int]] = []

    def visit(info: Any) -> None:
        if info.byte_offset is not None:
            ranges.append((int(info.byte_offset), int(info.byte_offset + info.size)))

    ds.id.chunk_iter(visit)
    return ranges


def _datasets_in(group: h5py.Group) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    group.visititems(lambda _name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def _recover(f: h5py.File, *, lost_from_byte: int | None = None) -> dict[str, Any]:
    """Rebuild what a crash or failed write left unreadable, so the scan can resume.

    The write order keeps done tiles whole; what can be broken is the state
    of the tile being written when the writer stopped and the newest events
    (their entries point at storage HDF5 had not yet written):

    - unreadable ``tile_meta`` entries are cleared (the dataset is rebuilt,
      see :func:`_rebuild_strings`); such a tile that was done (not
      expected) is made pending again, as is a done tile with a missing
      image chunk;
    - unreadable ``/events`` entries are dropped;
    - a pass whose creation was interrupted is removed (it is made again).
    - a ``tile_status`` byte that is not 0, 1 or 2 (a damaged or edited
      file) is made pending;
    - a done tile whose pixels no longer match their stored CRC-32 (a
      damaged disk or copy) is made pending, so resuming acquires it again;
    - when the file had lost its end (``lost_from_byte``: it was shorter
      than HDF5 recorded and was padded with zeros), done tiles with pixels
      there are made pending and a section's analysis results with data
      there are removed (``cordscope analyze`` computes them again).

    Returns
    -------
    dict
        What was repaired, for the ``repair`` event; empty if nothing.
    """
    repairs: dict[str, Any] = {}
    demoted: list[str] = []
    cleared: list[str] = []
    bad_status: list[str] = []
    lost_tiles: list[str] = []
    lost_analysis: list[str] = []
    checksum_failed: list[str] = []

    def in_lost_tail(ranges: list[tuple[int, int]]) -> bool:
        return lost_from_byte is not None and any(end > lost_from_byte for _, end in ranges)

    dropped = [key for key, g in _tile_groups(f, incomplete=True) if not _complete_pass(key, g)]
    for key in dropped:  # interrupted while being made: made again when the scan resumes
        section_id, name = split_pass_key(key)
        del f["sections"][section_id][PASSES_GROUP][str(name)]
    if dropped:
        repairs["passes_dropped"] = dropped
    for sid, g in _tile_groups(f):
        _finish_rebuild(g, "tile_meta")
        status = g["tile_status"]
        values = np.asarray(status[()])
        for t in _bad_statuses(values):
            bad_status.append(f"{tile_name(sid, int(t))} (status {int(values[t])})")
            status[int(t)] = np.uint8(TileStatus.PENDING)
        metas, readable = _read_strings(g["tile_meta"])
        bad = {i for i, m in enumerate(metas) if m is None}
        if not readable:
            _rebuild_strings(g, "tile_meta", [m or "" for m in metas], resizable=False)
            cleared += [f"{sid}/{i}" for i in sorted(bad)]
        ends = _chunk_ends(g["tiles"])
        n_c, n_z = g["tiles"].shape[1:3]
        for t in np.flatnonzero(status[()] == TileStatus.DONE):
            whole = all((int(t), c, z) in ends for c in range(n_c) for z in range(n_z))
            lost = lost_from_byte is not None and any(
                ends.get((int(t), c, z), 0) > lost_from_byte for c in range(n_c) for z in range(n_z)
            )
            if int(t) in bad or not whole or lost:
                status[t] = np.uint8(TileStatus.PENDING)
                (lost_tiles if lost else demoted).append(tile_name(sid, int(t)))
        for t in check_done_tiles(g).damaged:  # pixels changed since they were stored
            status[t] = np.uint8(TileStatus.PENDING)
            checksum_failed.append(tile_name(sid, t))
        analysis = g.get("analysis")
        if isinstance(analysis, h5py.Group) and in_lost_tail(
            [r for ds in _datasets_in(analysis) for r in _storage_ranges(ds)]
        ):
            del g["analysis"]
            g.create_group("analysis")
            lost_analysis.append(sid)
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
    if bad_status:
        repairs["bad_status_made_pending"] = bad_status
    if lost_tiles:
        repairs["tiles_lost"] = lost_tiles
    if lost_analysis:
        repairs["analysis_lost"] = lost_analysis
    if checksum_failed:
        repairs["tiles_failed_checksum"] = checksum_failed
    f.flush()
    return repairs


def describe_repairs(path: Path, repairs: dict[str, Any]) -> str:
    """One line saying what a repair did to ``path`` (for the user), from :func:`_recover`'s record."""
    parts: list[str] = []
    if (n := repairs.get("padded_bytes")) is not None:
        parts.append(f"its last {n} bytes were missing (the file was cut short) and were lost")
    if tiles := repairs.get("tiles_lost"):
        parts.append(f"{len(tiles)} done tiles lay there and will be acquired again ({_few(tiles)})")
    if sections := repairs.get("analysis_lost"):
        parts.append(
            f"the analysis of {_few(sections)} lay there and was removed (cordscope analyze redoes it)"
        )
    if tiles := repairs.get("tiles_failed_checksum"):
        parts.append(
            f"{len(tiles)} done tiles no longer match their checksums; they will be acquired again: "
            + _few(tiles)
        )
    if bad := repairs.get("bad_status_made_pending"):
        parts.append(f"{len(bad)} tiles had an invalid status and will be acquired again: {_few(bad)}")
    if tiles := repairs.get("tiles_made_pending"):
        parts.append(f"{len(tiles)} tiles left unfinished will be acquired again ({_few(tiles)})")
    if tiles := repairs.get("tile_meta_cleared"):
        parts.append(f"unreadable metadata of {len(tiles)} unfinished tiles cleared")
    if n := repairs.get("events_dropped"):
        parts.append(f"{n} unreadable events dropped")
    if repairs.get("end_of_file_bytes") and not parts:
        parts.append("its recorded end was restored after an interrupted write")
    return f"repaired {path.name}: " + "; ".join(parts or ["nothing to report"])


def _few(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")
