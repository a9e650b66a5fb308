"""Fewer tiles and fewer switches: the minimal cover of a section, and each tile's channel order."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import shapely
import useq

from acquisition.demo.plans import demo_plan
from acquisition.plan import validate_plan
from acquisition.plan.compile import (
    channels_from_current,
    cover_intervals,
    grid_cover,
    minimal_cover,
    minimum_tile_count,
    section_tiles,
)
from tests.acquisition.test_plan import TILE_10X_UM, ellipse, make_plan, plenty_of_disk, tiles_cover

pytestmark = pytest.mark.filterwarnings("error")

TILE = (TILE_10X_UM, TILE_10X_UM)


# ------------------------------------------------------------------ one line


@pytest.mark.parametrize(
    ("intervals", "tile", "pitch", "expected"),
    [
        pytest.param([(0.0, 10.0)], 10.0, 9.0, [5.0], id="exactly-one-tile"),
        pytest.param([(0.0, 4.0)], 10.0, 9.0, [2.0], id="short-stretch-centred"),
        pytest.param([(0.0, 19.0)], 10.0, 9.0, [5.0, 14.0], id="two-tiles-overlapping-by-1"),
        pytest.param([(0.0, 20.0)], 10.0, 9.0, [1.0, 10.0, 19.0], id="a-hair-more-takes-three-centred"),
        pytest.param([(0.0, 3.0), (5.0, 8.0)], 10.0, 9.0, [4.0], id="a-gap-inside-one-tile"),
        pytest.param([(0.0, 3.0), (30.0, 33.0)], 10.0, 9.0, [1.5, 31.5], id="far-stretches-own-runs"),
        pytest.param([(0.0, 9.0), (11.0, 19.0)], 10.0, 9.0, [4.5, 15.0], id="a-gap-starts-a-new-run"),
        pytest.param([(0.0, 9.0), (9.5, 19.0)], 10.0, 9.0, [5.0, 14.0], id="within-the-tile-the-run-goes-on"),
    ],
)
def test_cover_intervals(intervals, tile, pitch, expected) -> None:
    assert cover_intervals(intervals, tile_um=tile, pitch_um=pitch) == pytest.approx(expected)


def test_cover_intervals_covers_every_stretch_with_the_overlap() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        edges = np.sort(rng.uniform(0, 3000, 2 * rng.integers(1, 5)))
        intervals = [(float(a), float(b)) for a, b in edges.reshape(-1, 2)]
        centres = np.array(cover_intervals(intervals, tile_um=333.0, pitch_um=300.0))
        for a, b in intervals:
            for x in np.linspace(a, b, 50):
                assert np.any(np.abs(centres - x) <= 166.5 + 1e-9)
        assert np.all(np.diff(centres) > 0)


# ----------------------------------------------------------------- polygons

SHAPES = {
    "ellipse": ellipse(20_000, 10_000, 1_800, 1_100),
    "thin-diagonal-band": [[0, 0], [300, 0], [3_000, 2_500], [2_700, 2_500]],
    "c-shape": [
        [0, 0],
        [3_000, 0],
        [3_000, 600],
        [800, 600],
        [800, 1_400],
        [3_000, 1_400],
        [3_000, 2_000],
        [0, 2_000],
    ],
    "small": [[0, 0], [150, 0], [150, 100]],
}


@pytest.mark.parametrize("overlap_pct", [0.0, 10.0, 25.0])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_minimal_cover_covers_the_polygon(shape: str, overlap_pct: float) -> None:
    polygon = SHAPES[shape]
    centres = minimal_cover(polygon, tile_size_um=TILE, overlap_pct=overlap_pct)
    assert len(tiles_cover(polygon, centres, TILE)) == 0
    assert len(np.unique(np.round(centres, 6), axis=0)) == len(centres)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_minimal_cover_never_takes_more_than_the_grid(shape: str) -> None:
    polygon = SHAPES[shape]
    n = len(minimal_cover(polygon, tile_size_um=TILE, overlap_pct=10.0))
    assert n <= len(grid_cover(polygon, tile_size_um=TILE, overlap_pct=10.0))
    assert minimum_tile_count(polygon, tile_size_um=TILE, overlap_pct=10.0) == n


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        pytest.param(332.8, 332.8, 1, id="one-field"),
        pytest.param(1000.0, 700.0, 4 * 3, id="4-by-3"),
        pytest.param(3000.0, 300.0, 10, id="a-strip-one-row"),
    ],
)
def test_a_rectangle_takes_the_textbook_count(width: float, height: float, expected: int) -> None:
    # n tiles at pitch p cover w + (n - 1) p: n = ceil((L - w) / p) + 1 per axis
    rect = [[0, 0], [width, 0], [width, height], [0, height]]
    pitch = TILE_10X_UM * 0.9
    per_axis = [max(1, math.ceil((v - TILE_10X_UM) / pitch - 1e-9) + 1) for v in (width, height)]
    assert per_axis[0] * per_axis[1] == expected
    assert minimum_tile_count(rect, tile_size_um=TILE, overlap_pct=10.0) == expected


@pytest.mark.parametrize("shape", ["ellipse", "c-shape"])
def test_neighbours_overlap_by_the_plans_overlap(shape: str) -> None:
    centres = minimal_cover(SHAPES[shape], tile_size_um=TILE, overlap_pct=10.0)
    pitch = TILE_10X_UM * 0.9
    # rows (or columns): tiles sharing a coordinate; consecutive rows one pitch apart
    for axis in (0, 1):
        lines: dict[float, list[float]] = {}
        for c in centres:
            lines.setdefault(round(float(c[axis]), 6), []).append(float(c[1 - axis]))
        if all(len(v) == 1 for v in lines.values()):
            continue
        if np.allclose(np.diff(sorted(lines)), pitch):
            break
    else:
        pytest.fail("tiles are not in rows or columns one pitch apart")
    for along in lines.values():
        steps = np.diff(sorted(along))
        assert np.all((np.abs(steps - pitch) < 1e-6) | (steps > TILE_10X_UM)), steps  # a run, or a gap


def test_the_demo_sections_take_fewer_tiles_than_the_grid() -> None:
    plan = demo_plan(output=Path("x.h5"))
    minimal = section_tiles(plan, tile_size_um=TILE)
    grid = section_tiles(plan.model_copy(update={"tiling": "grid"}), tile_size_um=TILE)
    n_min, n_grid = sum(map(len, minimal.values())), sum(map(len, grid.values()))
    assert all(len(minimal[sid]) <= len(grid[sid]) for sid in grid)
    assert n_min < 0.97 * n_grid, (n_min, n_grid)


def test_validate_reports_the_minimum_per_section(demo_core, tmp_path: Path) -> None:
    plan = make_plan(tmp_path / "scan.h5", tiling="grid")
    summary = validate_plan(plan, demo_core, disk_free_bytes=plenty_of_disk)
    for s in plan.sections:
        least = minimum_tile_count(
            s.polygon_um, tile_size_um=summary.tile_size_um, overlap_pct=plan.overlap_pct
        )
        assert summary.min_tiles_per_section[s.id] == least <= summary.tiles_per_section[s.id]
    minimal = validate_plan(
        plan.model_copy(update={"tiling": "minimal"}), demo_core, disk_free_bytes=plenty_of_disk
    )
    assert minimal.min_tiles_per_section == minimal.tiles_per_section == summary.min_tiles_per_section


def test_a_multipolygon_target_is_covered() -> None:
    target = shapely.unary_union([shapely.box(0, 0, 400, 300), shapely.box(2_000, 0, 2_200, 200)])
    centres = minimal_cover(target, tile_size_um=(166.4, 166.4), overlap_pct=10.0)
    for piece in target.geoms:
        assert len(tiles_cover([list(c) for c in piece.exterior.coords[:-1]], centres, (166.4, 166.4))) == 0


# ------------------------------------------------------------ channel order


def _events(n_tiles: int, channels: tuple[str, ...], n_z: int = 1) -> list[useq.MDAEvent]:
    seq = useq.MDASequence(
        stage_positions=[useq.Position(x=100.0 * p, y=0.0, z=0.0) for p in range(n_tiles)],
        channels=[useq.Channel(config=c, group="Channel") for c in channels],
        z_plan=useq.ZRangeAround(range=2.0 * (n_z - 1), step=2.0) if n_z > 1 else None,
        axis_order=("p", "c", "z"),
    )
    return list(seq)


def _run(events: list[useq.MDAEvent], start: str | None) -> list[str]:
    """Channels in the order an engine tracking its current channel runs them."""
    now: list[tuple[str, str] | None] = [("Channel", start) if start else None]
    out = []
    for e in channels_from_current(events, lambda: now[0]):
        assert e.channel is not None
        out.append(e.channel.config)
        now[0] = (e.channel.group, e.channel.config)
    return out


@pytest.mark.parametrize(
    ("channels", "start", "expected"),
    [
        pytest.param(("D", "T"), None, "DT TD DT TD", id="two-alternate"),
        pytest.param(("D", "T"), "T", "TD DT TD DT", id="starts-in-the-current-channel"),
        pytest.param(("A", "B", "C"), None, "ABC CAB BCA ABC", id="three-rotate"),
        pytest.param(("D",), None, "D D D D", id="one-channel"),
    ],
)
def test_each_tile_starts_in_the_current_channel(channels, start, expected) -> None:
    order = _run(_events(4, channels), start)
    assert (
        " ".join("".join(order[i : i + len(channels)]) for i in range(0, len(order), len(channels)))
        == expected
    )


def test_rotation_keeps_z_slices_with_their_channel_and_every_index() -> None:
    events = _events(3, ("D", "T"), n_z=3)
    now: list[tuple[str, str] | None] = [None]
    seen = []
    for e in channels_from_current(events, lambda: now[0]):
        seen.append((e.index["p"], e.index["c"], e.index["z"]))
        now[0] = (e.channel.group, e.channel.config)  # type: ignore[union-attr]
    assert sorted(seen) == sorted((e.index["p"], e.index["c"], e.index["z"]) for e in events)
    tile1 = [s for s in seen if s[0] == 1]
    assert [c for _, c, _ in tile1] == [1, 1, 1, 0, 0, 0]
    assert [z for *_, z in tile1] == [0, 1, 2, 0, 1, 2]


def test_two_channels_take_one_switch_per_tile_instead_of_two() -> None:
    events = _events(10, ("D", "T"))
    alternate = _run(events, None)
    fixed = [e.channel.config for e in events]  # type: ignore[union-attr]

    def switches(order: list[str]) -> int:
        return sum(a != b for a, b in itertools.pairwise(order))

    assert switches(fixed) == 19 and switches(alternate) == 10
