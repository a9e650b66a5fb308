"""The base of CordScope's typed errors.

Every error CordScope raises for a user to act on derives from
:class:`CordScopeError`; its message is one line that names what is wrong.
The command line prints it without a traceback; the GUI shows it.
"""

from __future__ import annotations

__all__ = ["CordScopeError"]


class CordScopeError(Exception):
    """An error with a one-line message a user can act on."""
