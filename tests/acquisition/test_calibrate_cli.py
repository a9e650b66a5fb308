"""``cordscope calibrate`` and ``cordscope flatfield``: files beside the config, flat fields in a scan.

Both virtual microscopes at 512² (their configurations copied beside the
test, the sensor shrunk, model A given 20 % vignetting; model B has 12 % of
its own). A uniform dye slide flat-fielded with the written flat field is
uniform to ±3 %.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from acquisition.calibration import acquire_blank_field, acquire_dark_frames, flat_file, psf_file
from acquisition.demo import find_demo_hub
from acquisition.demo.devices import vignetting_map
from acquisition.demo.plans import demo_plan
from acquisition.hardware import build_core
from acquisition.session import ScanSession
from acquisition.storage import ScanWriter, read_sources
from analysis.calibration import measure_dark, read_calibration_file
from analysis.flatfield import read_flat
from analysis.results_format import read_analysis
from cordscope.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
BLOCK_PX = 32


def _config(
    tmp_path: Path, name: str, *, vignetting_pct: float | None = None, seed: int | None = None
) -> Path:
    """A demo configuration copied into a rig folder of its own, its sensor 512²."""
    cfg = tmp_path / "rig" / name
    cfg.parent.mkdir(exist_ok=True)
    text = (REPO / "hardware_configs" / name).read_text()
    text = re.sub(r"(Property,Camera,Sensor(Width|Height)),2048", r"\1,512", text)
    if vignetting_pct is not None:
        text += f"\n#py Property,Camera,Vignetting_pct,{vignetting_pct}\n"
    if seed is not None:
        text += f"\n#py Property,Camera,NoiseSeed,{seed}\n"
    cfg.write_text(text)
    rig = (REPO / "hardware_configs" / name).with_suffix(".rig.yaml")
    if rig.is_file():
        shutil.copy(rig, cfg.with_suffix(".rig.yaml"))
    return cfg


def _block_means(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    return (
        image[: h // BLOCK_PX * BLOCK_PX, : w // BLOCK_PX * BLOCK_PX]
        .reshape(h // BLOCK_PX, BLOCK_PX, w // BLOCK_PX, BLOCK_PX)
        .mean(axis=(1, 3))
    )


def _non_uniformity(image: np.ndarray) -> float:
    """Largest deviation of a 32×32 block's mean from the mean of the blocks (fraction)."""
    b = _block_means(image)
    return float(np.max(np.abs(b / b.mean() - 1.0)))


def _dye_field(cfg: Path, channel: str) -> np.ndarray:
    """The dye slide in a channel, dark-corrected (mean of 4 frames), as a scan would see it."""
    core = build_core(cfg)
    try:
        group = core.getChannelGroup()
        dark = acquire_dark_frames(core, {channel: 20.0}, channel_group=group)[channel]
        offset = measure_dark(dark.frames, channel=channel, exposure_ms=20.0, bit_depth=dark.bit_depth)
        hub = find_demo_hub(core)
        assert hub is not None
        core.setProperty(hub.get_label(), "Slide", "dye")
        frames = acquire_blank_field(core, channel, 20.0, n_frames=4).frames
    finally:
        core.close()
    return np.asarray(frames, dtype=np.float64).mean(axis=0) - offset.offset_adu


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """``cordscope`` sets up logging on the runner's stderr, closed after each call: put it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


MODELS = [
    pytest.param("demo.cfg", 20.0, id="model-a-20pct"),
    pytest.param("demo-model-b.cfg", None, id="model-b-12pct"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "vignetting_pct"), MODELS)
def test_a_blank_field_flat_makes_a_uniform_field_uniform(tmp_path, name, vignetting_pct):
    cfg = _config(tmp_path, name, vignetting_pct=vignetting_pct)
    result = runner.invoke(app, ["flatfield", "--config", str(cfg), "--objective", "10x", "--frames", "4"])
    assert result.exit_code == 0, result.output
    assert "dye slide" in result.output
    for channel in ("DAPI", "tdTomato"):
        path = flat_file(cfg, "10x", channel)
        assert path.is_file() and str(path.name) in result.output.replace("\n", "")
        flat = read_calibration_file(path).flats[channel]
        assert flat.method == "blank_field" and flat.n_images == 4
        with h5py.File(path, "r") as f:
            summary = json.loads(f.attrs["summary_json"])
        assert summary["xy_source"] == "the demo's dye slide, put on the stage for it"
        assert summary["dark_offset_source"].startswith("4 dark frames")
        field = _dye_field(cfg, channel)
        before, after = _non_uniformity(field), _non_uniformity(field / flat.image)
        assert before > 0.05, before  # the vignetting is there to be corrected
        print(f"{name} {channel}: non-uniformity {100 * before:.1f} % → {100 * after:.2f} %")
        assert after < 0.03, (before, after)


@pytest.mark.slow
def test_calibrate_measures_a_sane_psf_at_the_demo_bead_area(tmp_path):
    cfg = _config(tmp_path, "demo.cfg")
    result = runner.invoke(app, ["calibrate", "--config", str(cfg), "--objective", "10x"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "the demo slide's bead area" in out and "autofocus" in out
    psf = read_calibration_file(psf_file(cfg, "10x")).psf
    assert psf is not None and psf.source == "beads"
    # the demo optics at 10x: σ 0.45 px of 0.65 µm → FWHM 0.69 µm
    assert 0.55 < psf.fwhm_um < 0.85, psf.fwhm_um
    assert psf.n_beads >= 20
    assert "only" not in out and "focus is off" not in out


@pytest.fixture(scope="module")
def vignetted_scan(tmp_path_factory) -> Path:
    """rat01-Th7 (60 tiles) through a camera with 20 % vignetting, no analysis."""
    root = tmp_path_factory.mktemp("vignetted")
    cfg = _config(root, "demo.cfg", vignetting_pct=20.0, seed=5)
    core = build_core(cfg)
    try:
        plan = demo_plan(
            output=root / "s.h5", section_ids=["rat01-Th7"], focus={"strategy": "fixed", "z_um": 0.0}
        )
        result = ScanSession(core, plan).run()
    finally:
        core.close()
    assert result.complete
    return result.path


@pytest.mark.slow
def test_flat_fields_from_a_scans_tiles_are_stored_and_applied(vignetted_scan, tmp_path):
    path = tmp_path / "s.h5"
    shutil.copy(vignetted_scan, path)
    writer = ScanWriter.open_for_resume(path)  # a running scan holds the file
    try:
        result = runner.invoke(app, ["flatfield", str(path)])
    finally:
        writer.close()
    assert result.exit_code == 2 and "is in use" in " ".join(result.output.split()), result.output
    result = runner.invoke(app, ["flatfield", str(path), "--channel", "tdTomato"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "cordscope analyze" in out and "tdTomato: only 60 tiles" in out and "blank field" in out
    with h5py.File(path, "r") as f:
        group = f["calibration"]
        assert "flat/tdTomato" in group and "flat/DAPI" not in group
        flat = read_flat(group["flat/tdTomato"])
        source = read_sources(group)["flat/tdTomato"]
    assert flat.method == "scan_tiles" and source["kind"] == "scan_tiles"
    assert source["n_images"] == flat.n_images > 0
    # the estimate follows the camera's own fall-off (what a blank field would give)
    assert 15.0 < flat.fall_off_pct < 25.0, flat.fall_off_pct
    truth = vignetting_map(flat.image.shape, 20.0).astype(np.float64)
    # 60 tiles of one section: within 2-4 % of it (unseeded runs); the ±3 % a blank field gives
    # needs a few hundred tiles (tests/analysis/test_calibration.py)
    assert np.max(np.abs(flat.image / (truth / truth.mean()) - 1)) < 0.05
    result = runner.invoke(app, ["analyze", str(path)])
    assert result.exit_code == 0, result.output
    with h5py.File(path, "r") as f:
        params = read_analysis(f["sections/rat01-Th7/analysis"], with_mosaic=False).parameters
    assert params["calibration"]["flat_fielded"] == ["tdTomato"]
    assert params["calibration"]["flat"]["tdTomato"]["method"] == "scan_tiles"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["flatfield"], "give a SCAN.h5", id="flatfield-nothing"),
        pytest.param(
            ["flatfield", "x.h5", "--objective", "10x"], "not both", id="flatfield-scan-and-objective"
        ),
        pytest.param(["calibrate", "--x-um", "100"], "both --x-um and --y-um", id="calibrate-x-only"),
        pytest.param(["calibrate", "--channel", "GFP"], "--channel GFP", id="calibrate-unknown-channel"),
        pytest.param(
            ["calibrate", "--objective", "63x"], "--objective 63x", id="calibrate-unknown-objective"
        ),
        pytest.param(["calibrate", "--exposure-ms", "0"], "--exposure-ms", id="calibrate-zero-exposure"),
        pytest.param(
            ["flatfield", "--objective", "10x", "--frames", "0"], "--frames", id="flatfield-no-frames"
        ),
        pytest.param(["flatfield", "missing.h5"], "missing.h5", id="flatfield-no-such-scan"),
    ],
)
def test_bad_calibration_commands_are_one_line(tmp_path, args, message):
    cfg = _config(tmp_path, "demo.cfg")
    if args[0] == "calibrate" or "--objective" in args[1:2]:
        args = [*args, "--config", str(cfg)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (cfg.parent / "demo.calibration").exists()


@pytest.mark.slow
def test_info_shows_the_calibration_and_the_flags(vignetted_scan, tmp_path):
    path = tmp_path / "s.h5"
    shutil.copy(vignetted_scan, path)
    result = runner.invoke(app, ["info", str(path)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 8}
    # before an analysis: what the file holds (dark frames at the scan's exposures)
    assert re.search(
        r"│ (99\.9\d|100\.0\d) +│ 3\.\d\d +│ dark frames +│ 4 × 20 ms, 16-bit +│ none", rows["DAPI"]
    )
    assert "4 × 50 ms, 16-bit" in rows["tdTomato"]
    assert "no PSF calibration" in result.output and "not analysed yet" in result.output
    assert runner.invoke(app, ["flatfield", str(path), "--channel", "tdTomato"]).exit_code == 0
    assert runner.invoke(app, ["analyze", str(path)]).exit_code == 0
    result = runner.invoke(app, ["info", str(path)], env={"COLUMNS": "250"})
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 8}
    assert re.search(
        r"│ scan_tiles \(estimated from 60 of the scan's tiles .*│ \d+\.\d +│ 0/60 +│ 0/60", rows["tdTomato"]
    )
    assert re.search(r"│ none +│ — +│ 0/60 +│ 0/60", rows["DAPI"])
    assert "not analysed yet" not in result.output
    assert "no PSF calibration: axon objects keep their apparent (blurred) area" in result.output
    # a damaged flag group: info still shows the rest and says what it cannot read
    with h5py.File(path, "r+") as f:
        del f["sections/rat01-Th7/analysis/tile_flags/n_saturated"]
    result = runner.invoke(app, ["info", str(path)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert (
        "60/60 tiles" in result.output and "calibration: cannot be read from s.h5 (KeyError" in result.output
    )


@pytest.mark.slow
def test_scan_prints_one_calibration_line(tmp_path):
    cfg = _config(tmp_path, "demo.cfg")
    plan = demo_plan(
        output=tmp_path / "s.h5", section_ids=["rat01-Th7"], focus={"strategy": "fixed", "z_um": 0.0}
    )
    (tmp_path / "plan.yaml").write_text(plan.to_yaml())
    result = runner.invoke(app, ["scan", str(tmp_path / "plan.yaml"), "--config", str(cfg), "--no-analysis"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("calibration:")]
    channel = r"offset (99\.9\d|100\.0\d) ADU \(dark frames, read noise 3\.\d\d\)"
    assert len(lines) == 1 and re.fullmatch(
        rf"calibration: DAPI {channel}; tdTomato {channel}; no PSF calibration", lines[0]
    ), lines


@pytest.mark.slow
def test_an_offset_given_to_analyze_is_the_one_subtracted(vignetted_scan, tmp_path):
    path = tmp_path / "s.h5"
    shutil.copy(vignetted_scan, path)
    result = runner.invoke(app, ["analyze", str(path), "--dark-offset-adu", "90"])
    assert result.exit_code == 0, result.output
    with h5py.File(path, "r") as f:
        params = read_analysis(f["sections/rat01-Th7/analysis"], with_mosaic=False).parameters
    assert params["dark_offsets_adu"] == {"DAPI": 90.0, "tdTomato": 90.0}
    assert params["calibration"]["dark_offset_source"] == {"DAPI": "plan", "tdTomato": "plan"}
