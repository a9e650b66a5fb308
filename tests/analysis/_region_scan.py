"""A small analysed scan file with known regions, for the region-edit, QuPath and format tests.

One coronal section ``S1`` of 3 × 4 tiles (48 × 64 px at 0.5 µm, overlapping), a
synthetic "world" image per channel, and an analysis on a 3 µm grid whose sums
come from a real :class:`SectionAccumulator` fed with the tiles' axon masks and
tracer values. Regions are geometric: the tissue is an ellipse, gray matter an
inner ellipse, halves split at the midline x = ``MID_X_UM``, dorsal/ventral at
y = ``MID_Y_UM``, the territory a small disc.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import h5py
import numpy as np

from acquisition.storage import ScanWriter, SectionLayout
from analysis.maps import SectionAccumulator, heatmaps, region_table
from analysis.results_format import write_analysis

PIXEL_UM = 0.5
H, W = 48, 64
CHANNELS = ("DAPI", "tdTomato")
SECTION = "S1"
CELL_UM = 3.0
GRID_ORIGIN_UM = np.array([982.0, 1984.0])
GRID_SHAPE = (22, 40)  # 66 × 120 µm
MID_X_UM, MID_Y_UM = 1040.0, 2016.0
BIN_UM = 12.0


def tile_centres() -> np.ndarray:
    step_x, step_y = (W - 8) * PIXEL_UM, (H - 6) * PIXEL_UM
    return np.array([[1000.0 + i * step_x, 2000.0 + j * step_y] for j in range(3) for i in range(4)])


@functools.cache
def world(channel: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) world image of a channel on a 0.5 µm lattice from (960, 1960) µm, and its axon truth."""
    rng = np.random.default_rng(11 + channel)
    shape = (240, 320)
    axons = rng.random(shape) < (0.05 if channel == 1 else 0.0)
    image = (200 + 300 * rng.random(shape)).astype(np.float64)
    image[axons] += 2000
    return np.clip(image, 0, 65535).astype(np.uint16), axons


def cell_centres() -> tuple[np.ndarray, np.ndarray]:
    rows, cols = GRID_SHAPE
    x = GRID_ORIGIN_UM[0] + (np.arange(cols) + 0.5) * CELL_UM
    y = GRID_ORIGIN_UM[1] + (np.arange(rows) + 0.5) * CELL_UM
    return x[None, :], y[:, None]


def automatic_masks() -> dict[str, np.ndarray]:
    x, y = cell_centres()
    tissue = ((x - MID_X_UM) / 52) ** 2 + ((y - MID_Y_UM) / 28) ** 2 <= 1
    gray = ((x - MID_X_UM) / 24) ** 2 + ((y - MID_Y_UM) / 12) ** 2 <= 1
    territory = ((x - 1075.0) ** 2 + (y - 2006.0) ** 2 <= 8.0**2) & tissue & ~gray
    masks = {
        "section": tissue,
        "gray_matter": gray & tissue,
        "white_matter": tissue & ~gray,
        "left": tissue & (x < MID_X_UM),
        "right": tissue & (x >= MID_X_UM),
        "dorsal": tissue & (y < MID_Y_UM),
        "ventral": tissue & (y >= MID_Y_UM),
        "rubrospinal_territory": territory,
    }
    return {k: np.broadcast_to(v, GRID_SHAPE).copy() for k, v in masks.items()}


REGIONS_JSON = json.dumps(
    {
        "origin_um": GRID_ORIGIN_UM.tolist(),
        "pixel_size_um": CELL_UM,
        "orientation": "coronal",
        "axes": {
            "centre_um": [MID_X_UM, MID_Y_UM],
            "midline_point_um": [MID_X_UM, MID_Y_UM],
            "right_direction": [1.0, 0.0],
            "ventral_direction": [0.0, 1.0],
            "rostral_direction": None,
            "rotation_deg": 0.0,
        },
        "epicenter_um": None,
        "epicenter_source": None,
        "bin_edges_um": [],
        "user_regions": [],
        "region_names": list(automatic_masks()),
    }
)


def tile_pixels(t: int) -> np.ndarray:
    """(C, 1, H, W) raw tile cut from the worlds at the tile's planned centre."""
    cx, cy = tile_centres()[t]
    c0 = round((cx - W / 2 * PIXEL_UM - 960.0) / PIXEL_UM)
    r0 = round((cy - H / 2 * PIXEL_UM - 1960.0) / PIXEL_UM)
    return np.stack([world(c)[0][r0 : r0 + H, c0 : c0 + W] for c in range(len(CHANNELS))])[:, None]


def tile_axons(t: int) -> np.ndarray:
    cx, cy = tile_centres()[t]
    c0 = round((cx - W / 2 * PIXEL_UM - 960.0) / PIXEL_UM)
    r0 = round((cy - H / 2 * PIXEL_UM - 1960.0) / PIXEL_UM)
    return world(1)[1][r0 : r0 + H, c0 : c0 + W]


def accumulator() -> SectionAccumulator:
    acc = SectionAccumulator(
        origin_um=GRID_ORIGIN_UM,
        cell_um=CELL_UM,
        shape=GRID_SHAPE,
        tile_centres_um=tile_centres(),
        tile_shape=(H, W),
        tile_pixel_size_um=PIXEL_UM,
    )
    for t, centre in enumerate(tile_centres()):
        tracer = tile_pixels(t)[1, 0].astype(np.float32) - 100
        acc.add_tile(tile_axons(t), tracer, center_um=tuple(centre), pixel_size_um=PIXEL_UM)
    return acc


def make_scan(path: Path, *, plan_polygons: dict | None = None) -> Path:
    """Write the scan file with every tile done and the section analysed (all regions automatic)."""
    attrs = {"animal": "rat01", "group": "vehicle", "level": "Th7", "orientation": "coronal"}
    layout = SectionLayout(
        SECTION, tile_centres(), CHANNELS, 1, (H, W), PIXEL_UM, (W * PIXEL_UM, H * PIXEL_UM)
    )
    layout = dataclasses.replace(layout, attrs=attrs)
    with ScanWriter.create(
        path, plan_yaml="name: t\n", sections=[layout], config_path="demo.cfg", config_text="", core_state={}
    ) as writer:
        for t in range(len(tile_centres())):
            pixels = tile_pixels(t)
            for c in range(len(CHANNELS)):
                writer.write_image(SECTION, t, c, 0, pixels[c, 0])
            writer.complete_tile(SECTION, t, z_um=0.0, meta={})
    acc = accumulator()
    masks = automatic_masks()
    with h5py.File(path, "r+") as f:
        write_analysis(
            f[f"sections/{SECTION}/analysis"],
            maps=heatmaps(acc, bin_um=BIN_UM, tissue_mask=masks["section"]),
            masks=masks,
            table=region_table(acc, masks),
            parameters={"bin_um": BIN_UM},
            accumulator=acc,
            mosaic=np.zeros((2, *GRID_SHAPE), np.float32),
            mosaic_origin_um=GRID_ORIGIN_UM,
            mosaic_pixel_um=CELL_UM,
            channel_names=CHANNELS,
            regions_json=REGIONS_JSON,
        )
    return path
