"""Read back the analysis results saved in a scan file (no recomputation).

The live worker and ``cordscope analyze`` write each section's results into
``/sections/<id>/analysis/`` (:func:`analysis.maps.write_analysis`). This
module reads them, with the section's labels (animal, group, level,
orientation, injection side), for result browsers and study reports.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from acquisition.storage import ScanFile
from analysis.maps import SavedAnalysis, read_analysis

__all__ = ["SavedSection", "load_scan_results"]


@dataclasses.dataclass(frozen=True)
class SavedSection:
    """One section of a scan file with its saved analysis.

    Attributes
    ----------
    section_id : str
    attrs : dict
        Section attributes from the plan (``animal``, ``group``, ``level``,
        ``orientation``, ``injection_side``, ``polygon_um``, ...).
    analysis : SavedAnalysis or None
        None when the section has no analysis group (not analysed, or no tissue imaged).
    """

    section_id: str
    attrs: dict[str, Any]
    analysis: SavedAnalysis | None


def load_scan_results(path: str | Path) -> dict[str, SavedSection]:
    """Every section of a scan file with its saved analysis, in the file's section order.

    Parameters
    ----------
    path : path of a cordscope-scan HDF5 file

    Raises
    ------
    acquisition.storage.StorageError
        If the file is not a readable scan file.
    """
    out: dict[str, SavedSection] = {}
    with ScanFile.open(path) as scan:
        for sid in scan.section_ids:
            section = scan.section(sid)
            group = section.analysis_group
            saved = read_analysis(group) if group is not None and "regions_table" in group else None
            out[sid] = SavedSection(sid, section.attrs, saved)
    return out
