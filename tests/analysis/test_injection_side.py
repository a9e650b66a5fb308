"""A section with no known injection side gets no rubrospinal territory and says so (no guessed side)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from acquisition.demo.slide import demo_slide
from analysis.regions import section_regions
from analysis.section_analysis import SectionAnalysis
from tests.analysis.test_regions import P_UM, section_frame


@pytest.fixture(scope="module")
def frame():
    return section_frame(demo_slide(), "rat03-C5")


@pytest.mark.parametrize(("side", "has_territory"), [("left", True), ("right", True), (None, False)])
def test_territory_only_with_a_known_side(frame, side, has_territory):
    img, origin, _ = frame
    reg = section_regions(
        img, origin_um=origin, pixel_size_um=P_UM, orientation="coronal", injection_side=side
    )
    assert ("rubrospinal_territory" in reg.masks) == has_territory
    assert {"section", "gray_matter", "white_matter", "left", "right"} <= set(reg.masks)


def test_a_drawn_territory_is_kept_without_a_side(frame):
    img, origin, _ = frame
    square = np.array([[o + d for o, d in zip(origin, (500.0, 500.0), strict=True)]]) + np.array(
        [[0, 0], [200, 0], [200, 200], [0, 200]]
    )
    reg = section_regions(
        img,
        origin_um=origin,
        pixel_size_um=P_UM,
        orientation="coronal",
        injection_side=None,
        user_polygons_um={"rubrospinal_territory": square},
    )
    assert reg.masks["rubrospinal_territory"].any()


def test_the_analysis_warns_once_that_the_side_is_unknown(caplog):
    section = SectionAnalysis(
        section_id="S1",
        tile_xy_um=[[0.0, 0.0]],
        tile_shape_px=(64, 64),
        pixel_size_um=0.65,
        n_channels=2,
        tracer_channel=1,
        anatomy_channel=0,
        section_attrs={"orientation": "coronal", "injection_side": None},
    )
    with caplog.at_level(logging.WARNING, logger="analysis.section_analysis"):
        assert section._injection_side() is None
        assert section._injection_side() is None
    assert caplog.text.count("injection side not given") == 1
