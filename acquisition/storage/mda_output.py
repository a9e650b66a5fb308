"""The scan writer as a pymmcore-plus MDA runner output."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal, SignalGroup

from .format import EventKind, StorageError, TileStatus, _now_iso, tile_name
from .writer import ScanWriter

if TYPE_CHECKING:
    import useq

logger = logging.getLogger(__name__)

# --------------------------------------------------------------- MDA adapter


@dataclass(frozen=True, eq=False)
class TileStored:
    """A tile whose pixels, metadata and status are on disk: the one "tile stored" event of a scan.

    Emitted once per tile by :class:`MDAWriterOutput` (``events.tile_stored``),
    right after :meth:`ScanWriter.complete_tile` returned; progress counting
    and the live analysis subscribe to it.

    Attributes
    ----------
    section_id : str
    tile_index : int
    images : (n_channels, n_z, H, W) uint16 array
        The tile's pixels as written (the same array objects the camera gave;
        not to be modified).
    meta : Mapping
        The tile's metadata as stored in ``tile_meta`` (JSON types).
    """

    section_id: str
    tile_index: int
    images: np.ndarray
    meta: Mapping[str, Any]

    @property
    def name(self) -> str:
        """``<section>/<tile>`` (4-digit tile number), as in every CordScope output."""
        return tile_name(self.section_id, self.tile_index)


class WriterEvents(SignalGroup):
    """Signals of an :class:`MDAWriterOutput`, emitted from the runner's relay thread."""

    tile_stored = Signal(object)
    """A :class:`TileStored`: the tile is complete on disk."""


@dataclass
class _TileInProgress:
    frames: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    images: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    retries: list[dict[str, Any]] = field(default_factory=list)
    retake: dict[str, Any] | None = None


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
    - ``tile_meta``: planned and actual XY, exposure per channel, the device
      calls that needed a retry (``retries``: count, ``retried_calls``: what
      failed and how, from the frames' ``cordscope_retries`` metadata), the
      sharpness check (``retake``: decision, scores, focus and time, from the
      frames' ``cordscope_retake`` metadata, see :mod:`acquisition.retake`),
      and per frame its channel, plane, z, exposure, runner time and write time.

    Then ``events.tile_stored`` is emitted with a :class:`TileStored` (and a
    ``tile_retried`` event is logged for a tile that needed retries, a
    ``tile_retaken`` event for a tile that was refocused and imaged again).

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
    """

    def __init__(
        self,
        writer: ScanWriter,
        *,
        on_error: Callable[[StorageError], None] | None = None,
    ) -> None:
        self._writer = writer
        self._on_error = on_error
        self.events = WriterEvents()
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
        self._log(EventKind.START, sequence_uid=self._sequence_uid, n_positions=len(self._tiles))

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
        self._log(EventKind.PAUSE if paused else EventKind.RESUME)

    def sequenceCanceled(self, sequence: useq.MDASequence) -> None:
        """Log a ``cancel`` event."""
        self._log(EventKind.CANCEL, sequence_uid=str(sequence.uid))

    def sequenceFinished(self, sequence: useq.MDASequence) -> None:
        """Log a ``run_end`` event naming tiles left incomplete (they stay pending)."""
        incomplete = [tile_name(sid, t) for sid, t in sorted(self._in_progress)]
        self._in_progress.clear()
        self._log(EventKind.RUN_END, sequence_uid=str(sequence.uid), incomplete_tiles=incomplete)

    # ---------------------------------------------------------------- helpers

    def _log(self, kind: EventKind, **fields: Any) -> None:
        try:
            self._writer.log_event(kind, **fields)
        except StorageError as e:
            self._report(e)

    def _report(self, error: StorageError) -> None:
        # whoever passed on_error reports it to the user; a log line would say it twice
        logger.log(logging.INFO if self._on_error is not None else logging.ERROR, "%s", error)
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
        progress.images[(c, z)] = img
        progress.retries.extend(meta.get("cordscope_retries") or ())
        if (retake := meta.get("cordscope_retake")) is not None:
            progress.retake = dict(retake)
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
            "retries": len(progress.retries),
            "retried_calls": progress.retries,
            "mda_sequence_uid": self._sequence_uid,
            "frames": frames,
        }
        if progress.retake is not None:
            tile_meta["retake"] = progress.retake
        self._writer.complete_tile(sid, tile, z_um=float(np.mean(first_z)), meta=tile_meta)
        if progress.retries:
            self._log(EventKind.TILE_RETRIED, tile=tile_name(sid, tile), retried_calls=progress.retries)
        if progress.retake is not None and progress.retake.get("decision") == "retaken":
            self._log(EventKind.TILE_RETAKEN, tile=tile_name(sid, tile), retake=progress.retake)
        images = np.stack([np.stack([progress.images[(ci, zi)] for zi in range(n_z)]) for ci in range(n_c)])
        self.events.tile_stored.emit(TileStored(sid, tile, images, tile_meta))
