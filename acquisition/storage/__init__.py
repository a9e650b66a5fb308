"""The HDF5 scan file: format ``"cordscope-scan"``, version 1.

One file holds one scan: the plan that produced it, the hardware it ran on,
and, per section, every tile's pixels, planned position, focus, status and
metadata, plus a log of events (start, pause, retry, fault, finish)::

    /                   attrs: format, format_version, created, software_json
    /plan               the ScanPlan as YAML text (scalar string)
    /hardware           attrs: config_file; datasets: config_text, core_state_json
    /sections/<id>/     attrs: animal, group, level, orientation, injection_side,
                        polygon_um (JSON), channel_names (JSON), pixel_size_um,
                        tile_size_um, json_attrs (JSON list of the attrs stored as JSON)
        tiles           uint16 (n_tiles, n_channels, n_z, H, W), one chunk per image
        tile_xy_um      float64 (n_tiles, 2), planned stage position of each tile
        planned_tile_z_um float64 (n_tiles,), planned focus (NaN: none planned)
        tile_z_um       float64 (n_tiles,), focus used (NaN until known)
        tile_status     uint8 (n_tiles,), 0 pending, 1 done, 2 failed
        tile_meta       UTF-8 strings (n_tiles,), per-tile JSON; "" until written
        tile_crc32      int64 (n_tiles, n_channels, n_z), CRC-32 of each image's pixels
                        (little-endian uint16 bytes, zlib), written with the tile's metadata
                        before its status; -1 where none (files written before it have no
                        such dataset: their tiles read as unverified)
        analysis/       reserved for the analysis
        passes/<name>/  optional further passes over the section (e.g. ``20x``, an adaptive
                        pass at another objective): the datasets above but ``analysis``,
                        attrs section_id, pass_name, objective, kind, pass_complete
    /events             resizable UTF-8 strings, one JSON object per event
    /calibration        dark frames taken at the scan's start, PSF and flat fields
                        copied from calibration files (:mod:`.calibration`; additive:
                        files without it read as before)

A pass is added during the scan (:meth:`ScanWriter.add_pass`), once it is
known which tiles it takes; it is addressed everywhere by the key
``<section>@<pass>`` (``@`` cannot occur in a section id), e.g. tile names
``rat01-C5@20x/0003``. Readers that know no passes (format 1 as first
written) read the sections as before and never see the passes.

Everything is plain datasets and JSON / YAML text, so a reader needs nothing
but h5py. The file uses HDF5's default (oldest compatible) format, not SWMR:
a SWMR file killed mid-write is left flagged "open for write" and plain
``h5py.File(path, "r")`` refuses it until the flag is cleared, whereas a
default one survives ``SIGKILL`` with every done tile intact and opens as it
is, given the write order that :class:`ScanWriter` keeps: *pixels and
metadata, flush, then status, flush*. A tile counts as acquired only once its
status is 1.

Reading while a scan writes (another process: the GUI, napari,
``cordscope info``): the writer holds HDF5's exclusive file lock, so
:meth:`ScanFile.open` opens such a file *live*: read-only, without taking a
lock (the writer is never blocked or disturbed) and with HDF5's raw-data
caches off, so every read of ``tile_status`` and of pixels goes to the file.
That is safe without SWMR because everything a reader needs to find a tile
is fixed when the file is created: the tile datasets' chunks are allocated
up front (uncompressed scans, the default), so writing pixels and statuses
only overwrites raw bytes at fixed places, and a status reads 1 only after
the tile's pixels were flushed. A live reader therefore never sees a
half-written tile. What does change during a scan (``tile_meta`` strings and
``/events``) is read as of opening (:meth:`ScanFile.refresh` reopens); an
entry caught mid-write reads as missing, never as wrong data. Compressed
scans allocate chunks as they go and are readable only once closed.

Crash safety in detail:

- Uncompressed tiles have every image's chunk allocated when the file is
  created (the file is sparse until tiles arrive), so writing pixels never
  changes HDF5's structures.
- A crash (or a failed write) in the middle of HDF5's flush can still leave
  the newest strings (the metadata of the tile being completed, the newest
  event) pointing at storage HDF5 had not recorded. Done tiles are not
  affected by the write order, but such a file may need repair before it can
  be written again: :meth:`ScanWriter.open_for_resume` does it and logs a
  ``repair`` event.
- The writer refuses to write when less than :data:`FREE_SPACE_RESERVE_BYTES`
  are free, so a full disk is normally met before HDF5 is; after any write
  error it detaches from the file and stops, leaving the file as a crash
  would.

Integrity: every image's CRC-32 is stored before its tile is marked done;
:meth:`SectionReader.check_done_tiles` (``cordscope info --verify``) reads the
done tiles back and names those whose pixels changed since, and resuming makes
them pending so they are acquired again. With ``fsync_per_tile`` (the plan's
``reliability.fsync: per_tile``) the writer also asks the operating system to
put each tile on the disk before its status and again after it, so a power
cut cannot leave a tile marked done whose pixels were still in memory.

- :class:`ScanWriter` writes (and resumes) a scan; one thread at a time.
- :class:`MDAWriterOutput` plugs a writer into pymmcore-plus' MDA runner as
  an ordinary output (``core.mda.run(seq, output=MDAWriterOutput(writer))``).
- :class:`ScanFile` reads a scan (analysis, ``cordscope info``, tests).
"""

from .calibration import (
    CALIBRATION_FORMAT,
    CALIBRATION_FORMAT_VERSION,
    CALIBRATION_GROUP,
    DarkFrames,
    copy_calibration_parts,
    read_dark_frames,
    read_sources,
    record_source,
    require_calibration_group,
    write_dark_frames,
)
from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    FREE_SPACE_RESERVE_BYTES,
    PASSES_GROUP,
    STANDARD_SECTION_ATTRS,
    EventKind,
    NeedsRepair,
    StorageError,
    TileCheck,
    TileStatus,
    image_crc32,
    in_use,
    parse_tile_name,
    pass_key,
    required_free_bytes,
    split_pass_key,
    tile_name,
    touches_file,
)
from .mda_output import MDAWriterOutput, TileStored, WriterEvents
from .reader import ScanFile, ScanSummary, SectionReader, SectionSummary
from .writer import ScanWriter, SectionLayout

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_FORMAT_VERSION",
    "CALIBRATION_GROUP",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FREE_SPACE_RESERVE_BYTES",
    "PASSES_GROUP",
    "STANDARD_SECTION_ATTRS",
    "DarkFrames",
    "EventKind",
    "MDAWriterOutput",
    "NeedsRepair",
    "ScanFile",
    "ScanSummary",
    "ScanWriter",
    "SectionLayout",
    "SectionReader",
    "SectionSummary",
    "StorageError",
    "TileCheck",
    "TileStatus",
    "TileStored",
    "WriterEvents",
    "copy_calibration_parts",
    "image_crc32",
    "in_use",
    "parse_tile_name",
    "pass_key",
    "read_dark_frames",
    "read_sources",
    "record_source",
    "require_calibration_group",
    "required_free_bytes",
    "split_pass_key",
    "tile_name",
    "touches_file",
    "write_dark_frames",
]
