"""SectionAnalysis: order-independent state, set-aside state, no re-reads, bounded memory."""

from __future__ import annotations

import dataclasses
import tracemalloc

import h5py
import numpy as np
import pytest

from acquisition.plan.checks import section_analysis_bytes
from analysis.section_analysis import SectionAnalysis
from analysis.settings import AnalysisSettings
from tests.analysis.test_affine_tiles import AFFINES, TILE, P, add_all, section_for, world  # noqa: F401

ORDERS = {
    "serpentine": list(range(9)),
    "reversed": list(range(8, -1, -1)),
    "shuffled": [4, 0, 8, 2, 6, 1, 7, 3, 5],
}


def state_of(section: SectionAnalysis) -> dict[str, object]:
    acc, mos = section.accumulator, section.mosaic
    return {
        "imaged_px": acc.imaged_px.copy(),
        "axon_px": acc.axon_px.copy(),
        "tracer_sum": acc.tracer_sum.copy(),
        "mosaic_sum": mos._sum.copy(),
        "mosaic_weight": mos._weight.copy(),
        "pairs": dict(section._pairs),
    }


def assert_same_state(a: dict[str, object], b: dict[str, object]) -> None:
    for key in a:
        if key == "pairs":
            assert a[key] == b[key]
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # to the last bit


@pytest.mark.parametrize("name", ["identity", "rot1.5"])
def test_state_and_results_do_not_depend_on_tile_order(world, name):  # noqa: F811
    affine = AFFINES[name]
    states, tables, positions = {}, {}, {}
    for label, order in ORDERS.items():
        section, true = section_for(world, affine)
        add_all(section, world, affine, true, order)
        states[label] = state_of(section)
        res = section.results()
        tables[label] = [(r.region, r.area_um2, r.axon_area_um2, r.mean_tracer_intensity) for r in res.table]
        assert res.registration is not None
        positions[label] = res.registration.positions_um
    for label in ORDERS:
        assert_same_state(states["serpentine"], states[label])
        assert tables[label] == tables["serpentine"]
        np.testing.assert_array_equal(positions[label], positions["serpentine"])


def test_a_section_set_aside_and_brought_back_ends_in_the_same_state(world, tmp_path):  # noqa: F811
    affine = AFFINES["rot90"]
    whole, true = section_for(world, affine)
    add_all(whole, world, affine, true, range(9))
    reads: list[int] = []

    def read_tile(t: int) -> np.ndarray:
        from tests.analysis.test_affine_tiles import render

        reads.append(t)
        images = np.stack(
            [render(world, "anatomy", true[t], affine), render(world, "tracer", true[t], affine)]
        )
        return np.clip(images, 0, 65535).astype(np.uint16)[:, None]  # (C, Z, H, W), as a scan file gives

    first, _ = section_for(world, affine)
    add_all(first, world, affine, true, range(5))
    with h5py.File(tmp_path / "spill.h5", "w") as f:
        first.save_state(f.create_group("state"))
        back, _ = section_for(world, affine)
        back.read_tile = read_tile
        back.load_state(f["state"])
    add_all(back, world, affine, true, range(5, 9))
    # pairs whose first tile was set aside were measured from the file, giving the same numbers
    assert reads and set(reads) <= set(range(5))
    assert_same_state(state_of(whole), state_of(back))
    reads.clear()
    a, b = whole.results(), back.results()
    assert reads == []  # the rebuild at registered positions uses the kept reduced tiles
    assert a.rebuilt_at_registered_positions and b.rebuilt_at_registered_positions
    assert [r.pct_axonal_area for r in a.table] == [r.pct_axonal_area for r in b.table]


def test_results_never_read_a_tile_again(world):  # noqa: F811
    affine = AFFINES["identity"]
    section, true = section_for(world, affine)

    def no_reads(t: int) -> np.ndarray:
        raise AssertionError(f"tile {t} read again")

    section.read_tile = no_reads
    add_all(section, world, affine, true, range(9))
    res = section.results()
    assert res.rebuilt_at_registered_positions
    assert res.source is not None and sorted(res.source.tiles_added) == list(range(9))


def test_a_huge_section_needs_no_square_arrays():
    """83 000-tile plans once allocated an n × n neighbour array (issue 15, defect 9)."""
    side = 100  # 10 000 tiles of 64 × 64 px: the old n × n arrays would take > 1.6 GB
    step = 0.7 * 64 * P  # 19 px overlaps: registered pairs
    xy = np.array([(i * step, j * step) for j in range(side) for i in range(side)], dtype=np.float64)
    settings = AnalysisSettings(mosaic_pixel_um=40.0)  # a coarse grid: this test is about per-tile costs
    tracemalloc.start()
    try:
        section = SectionAnalysis(
            section_id="huge",
            tile_xy_um=xy,
            tile_shape_px=(64, 64),
            pixel_size_um=P,
            n_channels=2,
            tracer_channel=1,
            anatomy_channel=0,
            settings=settings,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100e6
    n_edges = sum(len(v) for v in section._partners.values()) // 2
    assert n_edges == 2 * side * (side - 1)  # edge neighbours of a square grid, found by a k-d tree
    need = section_analysis_bytes(
        _plan_with(settings), xy, tile_shape_px=(64, 64), pixel_affine_um=P * np.eye(2)
    )
    assert section.memory_bytes() < need < 10 * len(xy) * 64 * 64  # linear in the tiles


def test_memory_estimate_bounds_a_scanned_section(world):  # noqa: F811
    affine = AFFINES["identity"]
    section, true = section_for(world, affine)
    add_all(section, world, affine, true, [0, 1, 2, 3])  # the row above still waits for neighbours
    held = section.memory_bytes()
    need = section_analysis_bytes(
        _plan_with(section.settings), section.tile_xy_um, tile_shape_px=TILE, pixel_affine_um=affine
    )
    assert 0 < held <= need


@dataclasses.dataclass
class FakeSection:
    """The parts of a SectionReader that SectionAnalysis.from_reader reads."""

    attrs: dict
    section_id: str = "s1"
    channel_names: tuple[str, ...] = ("DAPI", "tdTomato")
    tile_xy_um: np.ndarray = dataclasses.field(default_factory=lambda: np.array([(0.0, 0.0), (150.0, 0.0)]))
    tile_shape_px: tuple[int, int] = (252, 252)
    pixel_size_um: float = P


PLAN = "channels: [{preset: DAPI, role: anatomy}, {preset: tdTomato, role: tracer}]"


@pytest.mark.parametrize(
    ("attr", "expected"),
    [
        (None, P * np.eye(2)),
        ("[[0.0, -0.65], [0.65, 0.0]]", AFFINES["rot90"]),
        ([[-0.65, 0.0], [0.0, 0.65]], AFFINES["mirror"]),
    ],
    ids=["absent-means-pixel-size", "json-text", "decoded-list"],
)
def test_from_reader_takes_the_sections_pixel_affine(attr, expected):
    attrs = {"orientation": "coronal"} | ({} if attr is None else {"pixel_affine_um": attr})
    section = SectionAnalysis.from_reader(FakeSection(attrs), plan_yaml=PLAN)
    np.testing.assert_allclose(section.pixel_affine_um, expected)
    np.testing.assert_allclose(section.parameters()["pixel_affine_um"], expected)
    # the grid is stage-aligned and covers the footprints through the affine
    x0, y0 = section.mosaic.origin_um
    assert x0 <= -126 * P and y0 <= -126 * P


def test_from_reader_refuses_a_bad_affine_naming_the_section():
    with pytest.raises(ValueError, match=r"section s1: .*singular"):
        SectionAnalysis.from_reader(FakeSection({"pixel_affine_um": "[[1, 2], [2, 4]]"}), plan_yaml=PLAN)


def _plan_with(settings):
    """A two-channel plan whose analysis settings are ``settings`` (for the memory estimate)."""
    from acquisition.plan import plan_from_dict

    return plan_from_dict(
        {
            "name": "memory",
            "output": "m.h5",
            "channels": [
                {"preset": "DAPI", "exposure_ms": 10, "role": "anatomy"},
                {"preset": "tdTomato", "exposure_ms": 10, "role": "tracer"},
            ],
            "sections": [{"id": "s1", "polygon_um": [[0, 0], [10, 0], [10, 10]]}],
            "analysis": settings.model_dump(mode="json"),
        }
    )
