"""Write a scan of known tiles, to be killed (or starved of disk) by test_storage.

Usage: ``python _kill_writer.py PATH [--disk-space BYTES] [--compression gzip]``

Creates PATH (or resumes it if it exists), prints ``ready``, then writes
every pending tile with :func:`expected_image` pixels and marks it done.
With ``--disk-space`` the process may not grow the file by more than BYTES
once it is created (``RLIMIT_FSIZE``), so a write fails as on a full disk;
the script then prints the StorageError and exits with status 3.
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys
from pathlib import Path

import numpy as np

SECTION_IDS = ("S1", "S2")
N_TILES = 600
CHANNELS = ("DAPI", "tdTomato")
N_Z = 2
SHAPE_PX = (64, 64)


def expected_image(section_index: int, tile_index: int, channel_index: int, z_index: int) -> np.ndarray:
    """The pixels written for one image: a ramp offset by a hash of its indices."""
    seed = (
        section_index * 7919 + tile_index * 104729 + channel_index * 1_299_709 + z_index * 15_485_863
    ) % 65536
    ramp = np.arange(SHAPE_PX[0] * SHAPE_PX[1], dtype=np.uint32).reshape(SHAPE_PX)
    return ((ramp * 31 + seed) % 65536).astype(np.uint16)


def expected_z_um(tile_index: int) -> float:
    """Focus recorded for a tile."""
    return 0.25 * tile_index


def layouts() -> list:
    """The scan's sections."""
    from acquisition.storage import SectionLayout

    xy = np.stack([np.arange(N_TILES) * 100.0, np.zeros(N_TILES)], axis=1)
    return [
        SectionLayout(sid, xy + 1000.0 * i, CHANNELS, N_Z, SHAPE_PX, 0.65, (41.6, 41.6), {"animal": "rat01"})
        for i, sid in enumerate(SECTION_IDS)
    ]


def main() -> int:
    """Create or resume the scan and write all pending tiles."""
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=Path)
    parser.add_argument("--disk-space", type=int, default=0)
    parser.add_argument("--compression", default=None)
    args = parser.parse_args()

    from acquisition.storage import EventKind, ScanWriter, StorageError

    if args.path.exists():
        writer = ScanWriter.open_for_resume(args.path)
        writer.log_event("resume")
    else:
        writer = ScanWriter.create(
            args.path,
            plan_yaml="name: kill-test\n",
            sections=layouts(),
            config_path="demo.cfg",
            config_text="# demo\n",
            core_state={},
            compression=args.compression,
        )
        writer.log_event("start")
    if args.disk_space:
        # The limit stands for a full disk under the scan file only: lift it for
        # the scratch file the writer detaches HDF5 onto after the failure.
        import acquisition.storage.writer as storage

        scratch_fd = storage._scratch_fd

        def scratch_on_another_disk() -> int:
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
            return scratch_fd()

        storage._scratch_fd = scratch_on_another_disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write (EFBIG) instead of dying
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        limit = args.path.stat().st_size + args.disk_space
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    print("ready", flush=True)
    try:
        for s, (sid, pending) in enumerate(writer.pending_tiles().items()):
            for t in pending:
                for c in range(len(CHANNELS)):
                    for z in range(N_Z):
                        writer.write_image(sid, int(t), c, z, expected_image(s, int(t), c, z))
                writer.complete_tile(sid, int(t), z_um=expected_z_um(int(t)), meta={"tile": int(t)})
        writer.log_event(EventKind.RUN_END)
    except StorageError as e:
        print(f"StorageError: {e}", flush=True)
        try:
            writer.close()
        except StorageError as e2:
            print(f"close: {e2}", flush=True)
        return 3
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
