"""Checks of the command's output paths, made before any work: never over an input, the right kind of path.

A command checks where it will write before it moves a stage or reads a
tile, so a wrong ``--out`` costs nothing: a folder where a file is wanted
(or the other way round), a folder that cannot be made, or a path that is
one of the command's own inputs (a scan, a plan, a config) is refused with a
one-line :class:`OutputPathError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from acquisition.errors import CordScopeError
from acquisition.storage import touches_file

__all__ = ["OutputPathError", "check_not_an_input", "check_output_file", "check_output_folder"]


class OutputPathError(CordScopeError):
    """An output path cannot be used (the message names the option and the path)."""


def check_not_an_input(output: Path, inputs: Mapping[str, Path | None]) -> None:
    """Refuse an output file that is one of the command's inputs (the same file, by any path).

    Parameters
    ----------
    output : Path
        What the command will write, replace or delete.
    inputs : mapping of description → path
        The command's inputs, e.g. ``{"the plan": plan.yaml}``; None values are skipped.
    """
    for what, path in inputs.items():
        if path is not None and touches_file(output, path, inside=False):
            raise OutputPathError(
                f"{output} is {what} (an input of this command); write the output somewhere else"
            )


def _creatable_folder_problem(folder: Path) -> str | None:
    anchor = folder
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        return f"{anchor} is a file, not a folder"
    if not os.access(anchor, os.W_OK | os.X_OK):
        return f"{anchor} is not writable"
    return None


def check_output_folder(folder: Path, option: str) -> None:
    """A folder the command will write into: an existing folder, or one that can be made.

    Raises
    ------
    OutputPathError
        If ``folder`` is a file, or cannot be created or written.
    """
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{option} {folder} is a file; give a folder")
    if (problem := _creatable_folder_problem(folder)) is not None:
        raise OutputPathError(f"{option} {folder}: cannot write there: {problem}")


def check_output_file(path: Path, option: str, *, suffixes: Iterable[str] = ()) -> None:
    """A file the command will write: not a folder, with one of ``suffixes``, in a writable folder.

    Raises
    ------
    OutputPathError
        If ``path`` is a folder, has another suffix, or its folder cannot be created or written.
    """
    allowed = tuple(s.lower() for s in suffixes)
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; give a file name")
    if allowed and path.suffix.lower() not in allowed:
        raise OutputPathError(f"{option} {path}: use a {' or '.join(allowed)} file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{option} {path} exists and is not writable")
    if (problem := _creatable_folder_problem(path.parent)) is not None:
        raise OutputPathError(f"{option} {path}: cannot write there: {problem}")
