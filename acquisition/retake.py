"""Every tile in focus: a sharpness check of each tile during the scan, with local refocus and retake.

A focus map is a smooth surface through a few points per section; a bubble,
a fold or a local bump of the tissue is between its points and goes unseen.
The scan engine therefore checks each tile as it is acquired, in the MDA
thread, before the tile is handed to the writer:

1. **Score against the neighbours.** The anatomy image (e.g. DAPI) of the
   new tile overlaps tiles already acquired. Over an overlap both tiles see
   the same tissue, so the ratio of their sharpness there
   (:func:`acquisition.focus.sharpness`, normalised variance of the
   Laplacian) says how much blurrier the new tile is, whatever the tissue
   looks like. :class:`NeighbourSharpness` keeps, for every pair of
   overlapping planned tiles, the accepted tile's score on its side of the
   overlap (two numbers per pair, no images), and compares the new tile's
   side with it. Each accepted tile also carries its *quality*, its
   sharpness as a fraction of its best-focus sharpness as far as known (1
   for a tile refocused or confirmed by a probe), so that a focus map that
   drifts, blurring each tile a little more than the last, is seen as the
   blur adds up: the new tile's *sharpness estimate* is the median, over its
   overlaps with tissue on both sides, of ratio × the neighbour's quality.
2. **Probe where unsure.** A tile with no neighbour to compare with (the
   first of a section, or one whose overlaps are glass), estimated below
   ``probe_below_ratio`` (``min_sharpness_ratio`` or not), or whose middle (which no overlap sees: a bump
   under the middle of a tile leaves its edges sharp) has less fine detail
   than ``min_texture_ratio`` of the tiles found in focus so far
   (:func:`interior_texture`), is imaged ``probe_step_um`` above and below its
   focus: a sharper image on either side by more than ``min_probe_gain``
   means it is out of focus; otherwise it is confirmed (quality 1). The
   probe needs no neighbour and does not depend on the tissue, so a noisy
   estimate alone never causes a retake.
3. **Refocus and retake.** A tile out of focus by the probe is refocused
   locally (a sweep of ``refocus_range_um`` in steps of ``refocus_step_um``
   around its focus, the peak refined by a parabola) and every channel is
   imaged again there; while its estimate stays below
   ``min_sharpness_ratio`` this repeats, at most ``max_retakes`` times, and
   the sharpest take is kept. A tile estimated below ``min_sharpness_ratio``
   that the probe finds in focus (a bubble: no focus helps) is kept and
   flagged ``still_blurred``.

The decision, the scores and the time it took are returned as a
:class:`RetakeRecord`, which the engine puts into the tile's metadata (the
writer stores it in ``tile_meta["retake"]`` and logs a ``tile_retaken``
event for a retaken tile).

The scoring is pure (numpy in, numbers out); the refocus and the retake go
through the small :class:`TileCamera` contract, which the engine fulfils
with its watchdog and retries.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import useq
from numpy.typing import NDArray
from scipy import ndimage as ndi

from .focus.sharpness import _grid_um, _refine_peak_um, sharpness
from .plan import RetakeSettings

__all__ = [
    "NeighbourSharpness",
    "RetakeRecord",
    "RetakeRunner",
    "TileCamera",
    "TileKey",
    "interior_texture",
    "tissue_fraction",
]

logger = logging.getLogger(__name__)

TileKey = tuple[str, int]

#: Overlaps narrower than this (pixels, either direction) are not compared.
MIN_OVERLAP_PX = 16
#: The interior check compares with the median of this many latest tiles found in focus...
TEXTURE_HISTORY = 100
#: ... once it has this many.
MIN_TEXTURE_REFERENCES = 5

Decision = Literal["accepted", "probed", "retaken", "no_reference", "no_tissue"]


def interior_texture(
    image: NDArray[Any], *, dark_offset_adu: float, tissue_min_adu: float, min_tissue_fraction: float = 0.5
) -> float | None:
    """How fine the detail in the middle of a tile is: its sharpness over that after a 1.5-pixel blur.

    Blur removes fine detail first, so this ratio falls with defocus (on the
    demo slide at 10x: 6.1 in focus, 5.7 at 1 µm, 4.8 at 2 µm), while it
    hardly depends on what the tissue looks like (5.7–6.2 over the tiles of
    a section in focus). It is measured on the central half of the tile (at
    most 512² pixels), which no overlap with a neighbour sees.

    Returns
    -------
    float or None
        None when the middle holds less than ``min_tissue_fraction`` tissue.
    """
    crop = _middle(image).astype(np.float32)
    if (
        tissue_fraction(crop, dark_offset_adu=dark_offset_adu, tissue_min_adu=tissue_min_adu)
        < min_tissue_fraction
    ):
        return None
    coarse = sharpness(ndi.gaussian_filter(crop, 1.5))
    return sharpness(crop) / coarse if coarse > 0 else None


def _middle(image: NDArray[Any]) -> NDArray[Any]:
    """The central half of a tile (at most 512² pixels): what no overlap with a neighbour sees."""
    a = np.asarray(image)
    h, w = a.shape
    ch, cw = min(h // 2, 512), min(w // 2, 512)
    return a[(h - ch) // 2 : (h - ch) // 2 + ch, (w - cw) // 2 : (w - cw) // 2 + cw]


def _probe_gain(at_z: NDArray[Any], around: Sequence[NDArray[Any]]) -> float:
    """Best relative sharpness gain above or below the focus, over the whole tile or its middle."""
    gains = []
    for part in (np.asarray, _middle):
        here = sharpness(part(at_z))
        if here > 0:
            gains.append(max(sharpness(part(a)) for a in around) / here - 1.0)
    return max(gains) if gains else math.inf


def tissue_fraction(image: NDArray[Any], *, dark_offset_adu: float, tissue_min_adu: float) -> float:
    """Fraction of 4 × 4-pixel blocks whose mean is more than ``tissue_min_adu`` above the dark offset.

    Parameters
    ----------
    image : (H, W) array
        Raw anatomy image (ADU).
    dark_offset_adu, tissue_min_adu : float
        Camera offset, and the signal above it that counts as tissue (ADU).

    Returns
    -------
    float
        0..1; 0 for an image smaller than one block.
    """
    a = np.asarray(image)
    h, w = (a.shape[0] // 4) * 4, (a.shape[1] // 4) * 4
    if h == 0 or w == 0:
        return 0.0
    blocks = a[:h, :w].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3), dtype=np.float64)
    return float(np.count_nonzero(blocks > dark_offset_adu + tissue_min_adu)) / blocks.size


# ------------------------------------------------------------- neighbours


@dataclasses.dataclass(frozen=True)
class _Overlap:
    other: TileKey
    rows: slice  # of this tile's image
    cols: slice


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A new tile's anatomy against its accepted neighbours.

    Attributes
    ----------
    ratio : float or None
        The tile's sharpness estimate: median over the compared overlaps of
        (this tile's sharpness / the neighbour's) × the neighbour's quality;
        None when no overlap could be compared.
    n_compared : int
        Overlaps with tissue on both sides.
    ratios : dict of str to float
        Per neighbour (its tile name), the ratio.
    """

    ratio: float | None
    n_compared: int
    ratios: Mapping[str, float]


class NeighbourSharpness:
    """Sharpness of tiles on both sides of every planned overlap, to score new tiles against accepted ones.

    Parameters
    ----------
    tiles : sequence of (section_id, tile_index, x_um, y_um)
        Planned tile centres (the compiled sequence's tile table).
    tile_shape_px : (H, W)
        Image shape.
    pixel_affine_um : (2, 2) array
        Stage µm per pixel step along (columns, rows) (:func:`acquisition.roles.pixel_affine_um`).
    dark_offset_adu, tissue_min_adu, min_tissue_fraction : float
        What counts as tissue (see :func:`tissue_fraction`) and how much of
        an overlap must be tissue to compare it.
    """

    def __init__(
        self,
        tiles: Sequence[tuple[str, int, float, float]],
        *,
        tile_shape_px: tuple[int, int],
        pixel_affine_um: NDArray[np.float64],
        dark_offset_adu: float,
        tissue_min_adu: float,
        min_tissue_fraction: float,
    ) -> None:
        self.tile_shape_px = (int(tile_shape_px[0]), int(tile_shape_px[1]))
        self.affine = np.asarray(pixel_affine_um, dtype=np.float64).reshape(2, 2)
        self.dark_offset_adu = float(dark_offset_adu)
        self.tissue_min_adu = float(tissue_min_adu)
        self.min_tissue_fraction = float(min_tissue_fraction)
        self._centres: dict[TileKey, NDArray[np.float64]] = {
            (str(s), int(t)): np.array([x, y], dtype=np.float64) for s, t, x, y in tiles
        }
        self._overlaps = self._planned_overlaps()
        # (accepted tile, neighbour) -> the accepted tile's score on its side of their overlap
        self._scores: dict[tuple[TileKey, TileKey], float] = {}
        self._accepted: set[TileKey] = set()
        self._quality: dict[TileKey, float] = {}  # accepted tiles a neighbour still compares with

    def _footprint_half_um(self) -> NDArray[np.float64]:
        h, w = self.tile_shape_px
        a = np.abs(self.affine)
        return np.array([a[0, 0] * w + a[0, 1] * h, a[1, 0] * w + a[1, 1] * h]) / 2

    def _planned_overlaps(self) -> dict[TileKey, list[_Overlap]]:
        half = self._footprint_half_um()
        inverse = np.linalg.inv(self.affine)
        h, w = self.tile_shape_px
        by_section: dict[str, list[TileKey]] = {}
        for key in self._centres:
            by_section.setdefault(key[0], []).append(key)
        out: dict[TileKey, list[_Overlap]] = {k: [] for k in self._centres}
        for keys in by_section.values():
            xy = np.array([self._centres[k] for k in keys]).reshape(-1, 2)
            for i, key in enumerate(keys):
                ci = xy[i]
                near = np.flatnonzero(np.all(np.abs(xy - ci) < 2 * half - 1e-9, axis=1))
                for j in near:
                    if j == i:
                        continue
                    cj = xy[j]
                    lo = np.maximum(ci, cj) - half
                    hi = np.minimum(ci, cj) + half
                    corners = np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], lo[1]], [hi[0], hi[1]]]) - ci
                    px = corners @ inverse.T + np.array([w / 2, h / 2])  # (u, v): column, row
                    c0, c1 = max(0, math.ceil(px[:, 0].min())), min(w, math.floor(px[:, 0].max()))
                    r0, r1 = max(0, math.ceil(px[:, 1].min())), min(h, math.floor(px[:, 1].max()))
                    if c1 - c0 >= MIN_OVERLAP_PX and r1 - r0 >= MIN_OVERLAP_PX:
                        out[key].append(_Overlap(keys[j], slice(r0, r1), slice(c0, c1)))
        return out

    def _score(self, image: NDArray[Any], overlap: _Overlap) -> float | None:
        part = image[overlap.rows, overlap.cols]
        fraction = tissue_fraction(
            part, dark_offset_adu=self.dark_offset_adu, tissue_min_adu=self.tissue_min_adu
        )
        if fraction < self.min_tissue_fraction:
            return None
        return sharpness(part)

    def has_reference(self, key: TileKey) -> bool:
        """Whether an accepted neighbour left a score to compare this tile with."""
        return any((o.other, key) in self._scores for o in self._overlaps.get(key, []))

    def compare(self, key: TileKey, anatomy: NDArray[Any]) -> Comparison:
        """Score a new tile's anatomy image against its accepted neighbours (nothing is stored)."""
        ratios: dict[str, float] = {}
        estimates: list[float] = []
        for overlap in self._overlaps.get(key, []):
            theirs = self._scores.get((overlap.other, key))
            if theirs is None or not theirs > 0:
                continue
            mine = self._score(anatomy, overlap)
            if mine is None:
                continue
            ratios[f"{overlap.other[0]}/{overlap.other[1]:04d}"] = mine / theirs
            estimates.append(mine / theirs * self._quality.get(overlap.other, 1.0))
        ratio = float(np.median(estimates)) if estimates else None
        return Comparison(ratio, len(ratios), ratios)

    def accept(self, key: TileKey, anatomy: NDArray[Any], *, quality: float = 1.0) -> None:
        """Record an accepted tile: its scores on its side of each overlap still to come, and its quality.

        ``quality`` is the tile's sharpness as a fraction of its best-focus sharpness (≤ 1).
        """
        self._accepted.add(key)
        waiting = False
        for overlap in self._overlaps.get(key, []):
            # the neighbour's score was needed for this tile only
            self._scores.pop((overlap.other, key), None)
            if overlap.other in self._accepted:
                if all(o.other in self._accepted for o in self._overlaps.get(overlap.other, [])):
                    self._quality.pop(overlap.other, None)  # nobody compares with it any more
                continue
            score = self._score(anatomy, overlap)
            if score is not None:
                self._scores[(key, overlap.other)] = score
                waiting = True
        if waiting:
            self._quality[key] = min(1.0, float(quality))

    def forget(self, key: TileKey) -> None:
        """A tile that failed: its neighbours no longer wait for it."""
        self._accepted.add(key)
        for overlap in self._overlaps.get(key, []):
            self._scores.pop((overlap.other, key), None)


# ------------------------------------------------------------- the runner


class TileCamera(Protocol):
    """What a retake needs of the microscope (the scan engine fulfils it)."""

    def snap_at(self, event: useq.MDAEvent, z_um: float) -> NDArray[Any]:
        """Image ``event``'s channel and exposure at ``z_um`` (same XY) and return the image."""

    def current_channel(self) -> tuple[str, str] | None:
        """``(group, config)`` of the channel the microscope is in."""


@dataclasses.dataclass(frozen=True)
class RetakeRecord:
    """What the sharpness check decided for one tile (stored as ``tile_meta["retake"]``).

    Attributes
    ----------
    decision : {"accepted", "probed", "retaken", "no_reference", "no_tissue"}
        ``accepted``: estimated sharp enough at its planned focus; ``probed``:
        estimated a little low, and the probe found it in focus; ``retaken``:
        refocused and imaged again; ``no_reference``: nothing to compare with,
        and the probe found it in focus; ``no_tissue``: too little tissue to judge.
    first_ratio : float or None
        Sharpness estimate of the first take, as a fraction of best focus
        (from the neighbours; None without one).
    final_ratio : float or None
        Estimate of the take kept.
    probe_gain : float or None
        If probed: best sharpness at z ± probe step over that at z, minus 1.
    retakes : int
        Takes after the first.
    planned_z_um, final_z_um : float
        Focus of the first take and of the take kept (µm).
    still_blurred : bool
        Below ``min_sharpness_ratio`` in the end: in focus by the probe yet blurred (a
        bubble: no focus helps), or retaken ``max_retakes`` times (the sharpest kept).
    time_s : float
        Time spent on the probe, refocus and retakes (s).
    """

    decision: Decision
    first_ratio: float | None
    final_ratio: float | None
    probe_gain: float | None
    retakes: int
    planned_z_um: float
    final_z_um: float
    still_blurred: bool
    time_s: float

    def to_json(self) -> dict[str, Any]:
        """As plain JSON types."""
        return dataclasses.asdict(self)


Frames = dict[int, tuple[NDArray[Any], useq.MDAEvent, Any]]
"""A tile's frames by channel index: ``(image, event, frame metadata)``."""


class RetakeRunner:
    """Decides, for each complete tile, whether to keep it, and refocuses and retakes it if not.

    Parameters
    ----------
    settings : RetakeSettings
    neighbours : NeighbourSharpness
    anatomy_channel : str
        Preset of the anatomy channel (the one scored).
    """

    def __init__(
        self, settings: RetakeSettings, neighbours: NeighbourSharpness, *, anatomy_channel: str
    ) -> None:
        self.settings = settings
        self.neighbours = neighbours
        self.anatomy_channel = anatomy_channel
        # interior textures of tiles found in focus (the latest), the reference of the interior check
        self._textures: collections.deque[float] = collections.deque(maxlen=TEXTURE_HISTORY)

    def _texture(self, anatomy: NDArray[Any]) -> float | None:
        return interior_texture(
            anatomy,
            dark_offset_adu=self.neighbours.dark_offset_adu,
            tissue_min_adu=self.settings.tissue_min_adu,
        )

    def _texture_low(self, texture: float | None) -> bool:
        """Whether a tile's middle is blurrier than the tiles found in focus so far."""
        if texture is None or len(self._textures) < MIN_TEXTURE_REFERENCES:
            return False
        return texture < self.settings.min_texture_ratio * float(np.median(self._textures))

    def _in_focus(self, texture: float | None) -> None:
        if texture is not None:
            self._textures.append(texture)

    def anatomy_index(self, frames: Frames) -> int | None:
        """Channel index of the anatomy frame, if the tile has one."""
        for c, (_, event, _) in frames.items():
            if event.channel is not None and event.channel.config == self.anatomy_channel:
                return c
        return None

    def settle(self, key: TileKey, frames: Frames, camera: TileCamera) -> tuple[Frames, RetakeRecord]:
        """Check a complete tile; refocus and retake it if blurred. Returns the frames to keep.

        Device errors raised by ``camera`` propagate (the engine fails the tile).
        """
        t0 = time.perf_counter()
        s = self.settings
        a = self.anatomy_index(frames)
        first_event = next(iter(frames.values()))[1]
        z0 = float(first_event.z_pos) if first_event.z_pos is not None else math.nan
        if a is None or not math.isfinite(z0):
            return frames, RetakeRecord("no_tissue", None, None, None, 0, z0, z0, False, 0.0)
        anatomy, anatomy_event, _ = frames[a]
        estimate = self.neighbours.compare(key, anatomy).ratio
        if estimate is None:
            fraction = tissue_fraction(
                anatomy, dark_offset_adu=self.neighbours.dark_offset_adu, tissue_min_adu=s.tissue_min_adu
            )
            if fraction < s.min_tissue_fraction:
                self.neighbours.accept(key, anatomy)
                return frames, RetakeRecord("no_tissue", None, None, None, 0, z0, z0, False, 0.0)
        texture = self._texture(anatomy)
        if estimate is not None and (estimate >= s.probe_below_ratio or s.max_retakes == 0):
            if s.max_retakes == 0 or not self._texture_low(texture):
                if estimate >= s.probe_below_ratio:
                    self._in_focus(texture)
                self.neighbours.accept(key, anatomy, quality=estimate)
                return frames, RetakeRecord("accepted", estimate, estimate, None, 0, z0, z0, False, 0.0)
            # sharp where it overlaps its neighbours, blurred in its middle: the probe decides
        # unsure (no neighbour, low, or blurred in its middle): the probe decides whether focus is
        # the cause, whatever the tissue; blur that no focus fixes (a bubble) is kept, flagged
        steps = (-s.probe_step_um, s.probe_step_um)
        probe_gain = _probe_gain(anatomy, [camera.snap_at(anatomy_event, z0 + d) for d in steps])
        if probe_gain <= s.min_probe_gain:
            blurred = estimate is not None and estimate < s.min_sharpness_ratio
            if not blurred:
                self._in_focus(texture)
            self.neighbours.accept(key, anatomy, quality=1.0)
            decision: Decision = "no_reference" if estimate is None else "probed"
            elapsed = time.perf_counter() - t0
            record = RetakeRecord(decision, estimate, estimate, probe_gain, 0, z0, z0, blurred, elapsed)
            return frames, record

        # refocus and retake; takes of the same tile compare by their whole anatomy image
        best_frames, best_z, best_sharpness = frames, z0, sharpness(anatomy)
        best_estimate = estimate
        retakes = 0
        while retakes < s.max_retakes:
            retakes += 1
            z = self._refocus(anatomy_event, z0, camera)
            take = self._take_all(frames, a, z, camera)
            new_anatomy = take[a][0]
            new_sharpness = sharpness(new_anatomy)
            logger.info(
                "tile %s/%04d: retake %d at z %.2f µm (planned %.2f): sharpness %.4g (best so far %.4g)",
                key[0],
                key[1],
                retakes,
                z,
                z0,
                new_sharpness,
                best_sharpness,
            )
            if new_sharpness > best_sharpness:
                best_frames, best_z, best_sharpness = take, z, new_sharpness
                if estimate is not None:
                    best_estimate = self.neighbours.compare(key, new_anatomy).ratio
            # one refocus finds the peak; again only while the neighbours still see it blurred (a bubble)
            if best_estimate is None or best_estimate >= s.min_sharpness_ratio:
                break
        still_blurred = best_estimate is not None and best_estimate < s.min_sharpness_ratio
        if not still_blurred:
            self._in_focus(self._texture(best_frames[a][0]))
        # at the focus peak a tile is as sharp as it gets: quality 1, unless blurred at every focus
        quality = best_estimate if still_blurred and best_estimate is not None else 1.0
        self.neighbours.accept(key, best_frames[a][0], quality=quality)
        elapsed = time.perf_counter() - t0
        record = RetakeRecord(
            "retaken", estimate, best_estimate, probe_gain, retakes, z0, best_z, still_blurred, elapsed
        )
        return best_frames, record

    def _refocus(self, anatomy_event: useq.MDAEvent, z0: float, camera: TileCamera) -> float:
        s = self.settings
        zs = _grid_um(z0, s.refocus_range_um, s.refocus_step_um)
        scores = np.array([sharpness(camera.snap_at(anatomy_event, float(z))) for z in zs])
        best = int(np.argmax(scores))
        refined = _refine_peak_um(zs, scores, best, s.refocus_step_um)
        return float(zs[best]) if refined is None else refined

    @staticmethod
    def _take_all(frames: Frames, anatomy: int, z: float, camera: TileCamera) -> Frames:
        """Every channel of the tile again at ``z``, starting with the channel the microscope is in."""
        order = sorted(frames, key=lambda c: c != anatomy)  # the sweep left the anatomy channel in
        now = camera.current_channel()
        for c in order:
            ev = frames[c][1]
            if ev.channel is not None and (ev.channel.group, ev.channel.config) == now:
                order.remove(c)
                order.insert(0, c)
                break
        out: Frames = {}
        for c in order:
            _, event, meta = frames[c]
            image = camera.snap_at(event, z)
            new_meta = dict(meta)
            position = dict(new_meta.get("position") or {})
            if position:
                position["z"] = z
                new_meta["position"] = position
            out[c] = (image, event.model_copy(update={"z_pos": z}), new_meta)
        return dict(sorted(out.items()))
