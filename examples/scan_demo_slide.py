"""Scan two sections of the demo slide from a script, unattended.

Run: ``python examples/scan_demo_slide.py [OUTPUT_DIR]``

The same five steps drive a real rig: build the core from its ``.cfg``, load
(or build) a plan, start the scan session (scan + live analysis) with a
progress callback, wait, open the result.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cordscope


def main(out_dir: Path) -> int:
    # 1. the microscope: here the simulated one, with a small camera to be quick
    core = cordscope.build_core("hardware_configs/demo.cfg")
    core.setProperty("Camera", "SensorWidth", 512)
    core.setProperty("Camera", "SensorHeight", 512)

    # 2. the plan: two sections of the demo slide, focus map on the tilted slide
    plan = cordscope.demo_plan(output=out_dir / "two-sections.h5", section_ids=["rat01-Th7", "rat05-Th7"])
    cordscope.save_plan(plan, out_dir / "two-sections.yaml")  # reproducible: rerun with `cordscope scan`

    # 3. run it with the live analysis beside it, reporting progress (called from the scan's threads)
    session = cordscope.ScanSession(core, plan, overwrite=True, analysis=cordscope.AnalysisProcess)
    session.events.progress.connect(
        lambda p: print(f"\r{p.state}: {p.tiles_done}/{p.tiles_total} tiles", end="", flush=True)
    )
    session.events.tile_failed.connect(lambda sid, tile, why: print(f"\ntile {sid}/{tile} failed: {why}"))
    session.start()

    # 4. wait for it to end: the tiles are on disk and the region tables written into the file
    result = session.wait()
    scan = result.scan
    print(f"\n{scan.state}: {scan.tiles_done}/{scan.tiles_total} tiles in {scan.elapsed_s:.1f} s")
    for section_id, rows in (result.tables or {}).items():
        rst = next(r for r in rows if r.region == "rubrospinal_territory")
        print(f"{section_id}: rubrospinal territory {rst.pct_axonal_area:.2f} % axonal area")

    # 5. open the result (plain HDF5: h5py alone can read it too)
    with cordscope.ScanFile.open(result.path) as scan:
        for section_id in scan.section_ids:
            section = scan.section(section_id)
            tile = section.read_tile(0)  # (channels, z, height, width)
            print(f"{section_id}: {section.n_tiles} tiles of {tile.shape}, channels {section.channel_names}")
    core.close()
    return 0 if result.complete else 1


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="cordscope-example-"))
    target.mkdir(parents=True, exist_ok=True)
    sys.exit(main(target))
