"""Per-tile, per-channel flags of a section's analysis (``analysis/tile_flags``, see :mod:`.results_format`).

Written with the rest of the analysis (:func:`analysis.results_format.write_analysis`);
computed by :func:`analysis.calibration.tile_flags`. Additive: groups without it read as before.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from analysis.calibration import TileFlags

__all__ = ["TileFlagArrays", "TileFlagTable", "read_tile_flags", "write_tile_flags"]

F32 = NDArray[np.float32]
BoolArray = NDArray[np.bool_]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True, eq=False)
class TileFlagArrays:
    """Per-tile, per-channel flags of a section (``analysis.calibration.tile_flags``).

    Attributes
    ----------
    background_adu : (n_tiles, C) float32
        Raw background of each tile and channel; NaN where the tile was not analysed.
    darker_than_offset : (n_tiles, C) bool
    n_saturated : (n_tiles, C) int64
        Pixels at full scale; -1 where the tile was not analysed.
    channel_names : tuple of str
    bit_depths : tuple of int or None
        Full scale used per channel (``2**bits − 1``); None where unknown (16 assumed).
    """

    background_adu: F32
    darker_than_offset: BoolArray
    n_saturated: NDArray[np.int64]
    channel_names: tuple[str, ...] = ()
    bit_depths: tuple[int | None, ...] = ()

    @property
    def analysed(self) -> BoolArray:
        """(n_tiles,) bool: tiles whose flags were computed."""
        return np.asarray((self.n_saturated >= 0).all(axis=1))


def write_tile_flags(h5_group: h5py.Group, flags: TileFlagArrays) -> None:
    """Write a section's per-tile flags into its ``analysis/`` group (replacing earlier ones)."""
    if "tile_flags" in h5_group:
        del h5_group["tile_flags"]
    g = h5_group.create_group("tile_flags")
    g.create_dataset("background_adu", data=np.asarray(flags.background_adu, dtype=np.float32))
    g.create_dataset("darker_than_offset", data=np.asarray(flags.darker_than_offset, dtype=np.uint8))
    g.create_dataset("n_saturated", data=np.asarray(flags.n_saturated, dtype=np.int64))
    g.attrs["channel_names"] = json.dumps(list(flags.channel_names))
    g.attrs["bit_depth"] = json.dumps(list(flags.bit_depths))
    g.attrs["description"] = (
        "per tile and channel: background_adu, the 1st percentile of the raw tile's block means; "
        "darker_than_offset, that background below the dark offset by more than noise allows (the "
        "offset is wrong, or the camera drifted); n_saturated, pixels at the camera's full scale; "
        "-1 / NaN where the tile was not analysed"
    )


def read_tile_flags(h5_group: h5py.Group | None) -> TileFlagArrays | None:
    """The per-tile flags of a section's ``analysis/`` group; None if it has none (older analyses)."""
    if h5_group is None or "tile_flags" not in h5_group:
        return None
    g = h5_group["tile_flags"]
    return TileFlagArrays(
        background_adu=np.asarray(g["background_adu"][()], dtype=np.float32),
        darker_than_offset=np.asarray(g["darker_than_offset"][()], dtype=bool),
        n_saturated=np.asarray(g["n_saturated"][()], dtype=np.int64),
        channel_names=tuple(json.loads(_text(g.attrs.get("channel_names", "[]")))),
        bit_depths=tuple(json.loads(_text(g.attrs.get("bit_depth", "[]")))),
    )


class TileFlagTable:
    """The per-tile flags a section's analysis collects (the caller holds its own lock).

    Parameters
    ----------
    n_tiles, n_channels : int
    """

    def __init__(self, n_tiles: int, n_channels: int) -> None:
        shape = (int(n_tiles), int(n_channels))
        self.background_adu = np.full(shape, np.nan, dtype=np.float32)
        self.darker_than_offset = np.zeros(shape, dtype=bool)
        self.n_saturated = np.full(shape, -1, dtype=np.int64)

    def set(self, tile: int, channel: int, background_adu: float, darker: bool, n_saturated: int) -> None:
        """Record one tile's flags in one channel."""
        self.background_adu[tile, channel] = background_adu
        self.darker_than_offset[tile, channel] = darker
        self.n_saturated[tile, channel] = n_saturated

    def set_tile(self, tile: int, flags: Sequence[TileFlags]) -> None:
        """Record one tile's flags, one per channel."""
        for c, f in enumerate(flags):
            self.set(tile, c, f.background_adu, f.darker_than_offset, f.n_saturated)

    def copy_from(self, other: TileFlagTable) -> None:
        """Take another table's flags (same shape)."""
        for name in _STATE:
            getattr(self, name)[...] = getattr(other, name)

    def arrays(self, channel_names: tuple[str, ...], bit_depths: tuple[int | None, ...]) -> TileFlagArrays:
        """The flags so far (copies)."""
        return TileFlagArrays(
            self.background_adu.copy(),
            self.darker_than_offset.copy(),
            self.n_saturated.copy(),
            channel_names,
            bit_depths,
        )

    def save(self, group: h5py.Group) -> None:
        """Into a section's saved state (``tile_<name>`` datasets)."""
        for name in _STATE:
            group.create_dataset(f"tile_{name}", data=getattr(self, name))

    def load(self, group: h5py.Group) -> None:
        """From a saved state; a state saved without flags leaves them unset."""
        if "tile_n_saturated" in group:
            for name in _STATE:
                getattr(self, name)[...] = group[f"tile_{name}"][()]


_STATE = ("background_adu", "darker_than_offset", "n_saturated")
