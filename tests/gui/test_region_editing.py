"""The region editor's geometry without widgets: brush cells, outline rings, pending edits."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import mapping, shape

from analysis.region_edits import GridGeometry, RegionEdit, RegionReset, rasterize_geometry_um
from gui.region_editing import PendingEdits, brush_cells, geometry_rings, rings_geometry

GRID = GridGeometry(np.array([0.0, 0.0]), 1.0, (10, 12))  # cell (r, c) centred at (c + 0.5, r + 0.5)


def _cells_near(points: list[tuple[float, float]], radius: float) -> np.ndarray:
    """Brute force: cells whose centre is within ``radius`` of a densely sampled polyline."""
    x, y = np.meshgrid(np.arange(12) + 0.5, np.arange(10) + 0.5)
    out = np.zeros((10, 12), bool)
    for (ax, ay), (bx, by) in itertools.pairwise(points):
        for t in np.linspace(0.0, 1.0, 2001):
            out |= (x - (ax + t * (bx - ax))) ** 2 + (y - (ay + t * (by - ay))) ** 2 <= radius**2 + 1e-9
    return out


@pytest.mark.parametrize(
    ("start", "end", "radius"),
    [
        ((5.5, 4.5), (5.5, 4.5), 1.0),  # a click: a disc
        ((0.5, 0.5), (11.5, 9.5), 1.2),  # one fast diagonal move across the grid: no gap
        ((2.0, 5.0), (9.0, 5.0), 0.6),  # thin brush along a row
        ((-5.0, -5.0), (1.0, 1.0), 2.0),  # starts off the grid
        ((30.0, 30.0), (40.0, 30.0), 3.0),  # entirely off the grid
    ],
    ids=["dot", "fast-diagonal", "thin-row", "from-outside", "outside"],
)
def test_brush_covers_every_cell_near_the_stroke(start, end, radius) -> None:
    got = brush_cells(GRID, start, end, radius)
    np.testing.assert_array_equal(got, _cells_near([start, end], radius))


def test_brush_on_a_shifted_grid_uses_its_origin_and_cell_size() -> None:
    grid = GridGeometry(np.array([100.0, 200.0]), 4.0, (5, 5))  # centres at 102, 106, ... / 202, 206, ...
    got = brush_cells(grid, (106.0, 206.0), (106.0, 206.0), 4.5)
    expected = np.zeros((5, 5), bool)
    expected[1, 0:3] = expected[0:3, 1] = True  # the centre cell and its four neighbours (4 µm away)
    np.testing.assert_array_equal(got, expected)


def test_a_stroke_of_segments_is_solid() -> None:
    path = [(1.0, 1.0), (10.0, 2.0), (3.0, 8.5), (11.0, 8.0)]
    painted = np.zeros(GRID.shape, bool)
    for a, b in itertools.pairwise(path):
        painted |= brush_cells(GRID, a, b, 0.8)
    np.testing.assert_array_equal(painted, _cells_near(path, 0.8))


@pytest.mark.parametrize(
    "geometry",
    [
        shapely.box(1, 1, 6, 5),
        shapely.box(0, 0, 10, 8).difference(shapely.box(3, 3, 5, 5)),  # a hole
        shapely.MultiPolygon([shapely.box(0, 0, 2, 2), shapely.box(5, 5, 9, 9)]),
    ],
    ids=["polygon", "hole", "multipolygon"],
)
def test_rings_round_trip(geometry) -> None:
    rings = geometry_rings(mapping(geometry))
    assert all(len(r) >= 3 for polygon in rings for r in polygon)
    back = shape(rings_geometry(rings))
    assert back.symmetric_difference(geometry).area < 1e-9


def test_a_dragged_ring_that_crosses_itself_is_made_valid() -> None:
    bow_tie = [[[(0.0, 0.0), (4.0, 4.0), (4.0, 0.0), (0.0, 4.0)]]]
    geometry = rings_geometry(bow_tie)
    assert geometry is not None and shape(geometry).is_valid
    assert shape(geometry).area == pytest.approx(8.0)  # the two triangles
    assert rings_geometry([[[(0.0, 0.0), (1.0, 1.0)]]]) is None  # no polygon left


def test_pending_edits_keep_the_latest_change_per_region(tmp_path: Path) -> None:
    pending = PendingEdits()
    box = mapping(shapely.box(1, 1, 3, 3))
    first = RegionEdit("rubrospinal_territory", "edited", geometry_um=box)
    second = RegionEdit("rubrospinal_territory", "drawn", geometry_um=box)
    pending.set(tmp_path / "a.h5", "S1", first)
    pending.set(tmp_path / "a.h5", "S1", RegionReset("gray_matter"))
    pending.set(tmp_path / "a.h5", "S1", second)
    pending.set(tmp_path / "a.h5", "S2", first)
    edits = pending.get(tmp_path / "a.h5", "S1")
    assert (
        list(edits) == ["rubrospinal_territory", "gray_matter"] and edits["rubrospinal_territory"] is second
    )
    assert PendingEdits.kinds(edits) == {"rubrospinal_territory": "drawn", "gray_matter": "automatic"}
    assert (
        sorted(pending.sections(tmp_path / "a.h5")) == ["S1", "S2"]
        and pending.sections(tmp_path / "b.h5") == []
    )
    pending.drop(tmp_path / "a.h5", "S1", "gray_matter")
    assert list(pending.get(tmp_path / "a.h5", "S1")) == ["rubrospinal_territory"]
    pending.drop(tmp_path / "a.h5", "S1")
    assert pending.sections(tmp_path / "a.h5") == ["S2"]


def test_brush_mask_rasterises_like_a_polygon_of_the_same_cells() -> None:
    # what the editor stores for a brush edit is a mask; the same cells as a polygon give the same mask
    painted = brush_cells(GRID, (2.0, 2.0), (9.0, 7.0), 1.5)
    from analysis.region_edits import mask_geometry_um

    outline = mask_geometry_um(painted, grid=GRID)
    np.testing.assert_array_equal(rasterize_geometry_um(outline, grid=GRID), painted)


def _mask(*cells: tuple[int, int]) -> np.ndarray:
    out = np.zeros(GRID.shape, bool)
    for r, c in cells:
        out[r, c] = True
    return out


BLOCK = [(r, c) for r in (1, 2, 3) for c in (1, 2, 3, 4)]  # inside box(1, 1, 5, 4)
STRAY = (0, 2)  # a cell of the mask the simplified outline leaves out


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (shapely.box(1, 1, 6, 4), _mask(*BLOCK, STRAY, (1, 5), (2, 5), (3, 5))),
        (shapely.box(2, 1, 5, 4), _mask(*[rc for rc in BLOCK if rc[1] != 1], STRAY)),
        (shapely.box(1, 1, 5, 4), _mask(*BLOCK, STRAY)),
        (None, _mask(STRAY)),
    ],
    ids=["pulled-out", "pushed-in", "untouched", "gone"],
)
def test_a_dragged_outline_changes_only_the_cells_it_swept(after, expected) -> None:
    from gui.region_editing import dragged_mask

    before = mapping(shapely.box(1, 1, 5, 4))
    got = dragged_mask(_mask(*BLOCK, STRAY), before, None if after is None else mapping(after), grid=GRID)
    np.testing.assert_array_equal(got, expected)
