"""The installed keybroker version, for ``--version`` and the services' start-up log.

Invariant: read from the installed distribution's metadata when asked (never at import time);
an uninstalled source tree reports ``0+unknown``.
"""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    """``keybroker`` distribution version (``0+unknown`` when not installed)."""
    try:
        return metadata.version("keybroker")
    except metadata.PackageNotFoundError:
        return "0+unknown"
