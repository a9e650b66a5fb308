"""Icons for pymmcore-widgets without the internet.

pymmcore-widgets draws its icons with SVGs that pyconify fetches from the
Iconify web API at run time. Microscope PCs are often offline; there,
``StageWidget`` raises ``ConnectionError`` on construction and other widgets
lose their icons. :func:`use_offline_icons` answers pyconify's requests
locally from the Material Design Icons set packaged on PyPI
(``material-design-icons-pack``), applying the colour, size, flip and
rotation the widget asked for, and keeps pyconify's SVG cache in a folder of
CordScope's own. No request leaves the machine.

The few icons pymmcore-widgets takes from other Iconify sets are mapped to
their closest Material Design icon.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import material_design_icons_pack as mdi
import requests
from requests.adapters import BaseAdapter

__all__ = ["ICONIFY_API", "OfflineIconifyAdapter", "offline_svg", "use_offline_icons"]

logger = logging.getLogger(__name__)

ICONIFY_API = "https://api.iconify.design"

#: Icons pymmcore-widgets / superqt take from non-MDI sets -> MDI equivalents.
NON_MDI_EQUIVALENTS: dict[str, str] = {
    "bi:sign-stop-fill": "stop-circle",
    "bi:bell": "bell",
    "bi:alarm-fill": "alarm",
    "carbon:transpose": "swap-horizontal",
    "fa6-solid:wave-square": "square-wave",
    "fluent:edit-off-20-regular": "pencil-off-outline",
    "fluent:folder-add-24-regular": "folder-plus-outline",
    "fluent:document-add-24-regular": "file-document-plus-outline",
    "fluent:form-new-24-regular": "form-select",
    "fluent:delete-24-regular": "delete-outline",
    "fluent:save-copy-24-regular": "content-save-all-outline",
    "fluent:layout-column-two-24-regular": "view-column-outline",
    "ic:baseline-power": "power-plug",
    "ic:baseline-power-off": "power-plug-off",
    "ic:outline-check-box-outline-blank": "checkbox-blank-outline",
    "ic:baseline-plus": "plus",
    "ic:outline-add-box": "plus-box-outline",
    "majesticons:open": "open-in-new",
    "mynaui:letter-p-diamond": "alpha-p-box-outline",
    "mynaui:letter-c-waves-solid": "alpha-c-circle",
    "ph:tree-view": "file-tree-outline",
    "ph:path-duotone": "vector-polyline",
}


def _mdi_slug(prefix: str, name: str) -> str | None:
    if prefix == "mdi":
        return name
    return NON_MDI_EQUIVALENTS.get(f"{prefix}:{name}")


def offline_svg(
    prefix: str,
    name: str,
    *,
    color: str | None = None,
    height: str | None = None,
    width: str | None = None,
    flip: str | None = None,
    rotate: str | None = None,
) -> bytes | None:
    """Return the SVG for an Iconify key from the packaged icon set, or None.

    Parameters
    ----------
    prefix, name : str
        Iconify icon set and icon name (``"mdi", "arrow-up"``).
    color, height, width, flip, rotate : str, optional
        The Iconify API's customisations, applied as the API would.
    """
    slug = _mdi_slug(prefix, name)
    icon = mdi.get_icon(slug) if slug else None
    if icon is None:
        return None
    svg = icon.svg
    attrs = []
    if color:
        attrs.append(f'fill="{color}"')
    attrs.append(f'width="{width or (height if height else "1em")}"')
    attrs.append(f'height="{height or (width if width else "1em")}"')
    svg = svg.replace("<svg ", "<svg " + " ".join(attrs) + " ", 1)
    transforms = []
    if rotate:
        turns = {"1": 90, "2": 180, "3": 270}.get(str(rotate))
        degrees = turns if turns is not None else float(str(rotate).replace("deg", "") or 0)
        transforms.append(f"rotate({degrees} 12 12)")
    if flip:
        sx = -1 if "horizontal" in flip else 1
        sy = -1 if "vertical" in flip else 1
        transforms.append(f"translate({12 - 12 * sx} {12 - 12 * sy}) scale({sx} {sy})")
    if transforms:
        svg = re.sub(r"(<svg[^>]*>)(.*)(</svg>)", rf'\1<g transform="{" ".join(transforms)}">\2</g>\3', svg)
    return svg.encode()


class OfflineIconifyAdapter(BaseAdapter):
    """A ``requests`` transport that answers the Iconify API from local icons."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        """Answer one request: ``/last-modified`` and ``/<prefix>/<name>.svg``."""
        parts = urlsplit(request.url or "")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path.strip("/")
        response = requests.Response()
        response.request = request
        response.url = request.url or ""
        response.headers["Content-Type"] = "application/json"
        if path == "last-modified":
            response.status_code = 200
            response._content = json.dumps({"lastModified": {}}).encode()
            return response
        match = re.fullmatch(r"([a-z0-9-]+)/([a-z0-9-]+)\.svg", path)
        svg = None
        if match:
            svg = offline_svg(
                match.group(1),
                match.group(2),
                color=query.get("color"),
                height=query.get("height"),
                width=query.get("width"),
                flip=query.get("flip"),
                rotate=query.get("rotate"),
            )
        if svg is None:
            response.status_code = 404
            response._content = b"404"
            logger.debug("no offline icon for %s", path)
            return response
        response.status_code = 200
        response.headers["Content-Type"] = "image/svg+xml"
        response._content = svg
        return response

    def close(self) -> None:
        """Nothing to release."""


def use_offline_icons(cache_dir: str | Path | None = None) -> Path:
    """Serve pymmcore-widgets' icons from the packaged icon set; no network.

    Call once before any pymmcore-widgets widget is built. Safe to call again.

    Parameters
    ----------
    cache_dir : str or Path, optional
        Where pyconify keeps its SVG files. Default: a ``cordscope-icons``
        folder in the user's temporary directory (``PYCONIFY_CACHE`` if set).

    Returns
    -------
    Path
        The SVG cache folder in use.
    """
    folder = Path(
        cache_dir or os.environ.get("PYCONIFY_CACHE") or Path(tempfile.gettempdir()) / "cordscope-icons"
    )
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PYCONIFY_CACHE"] = str(folder)
    import pyconify._cache as pyconify_cache
    import pyconify.api as pyconify_api

    # pyconify reads PYCONIFY_CACHE at import; point an already-imported copy at our folder.
    pyconify_cache.PYCONIFY_CACHE = str(folder)
    pyconify_cache.CACHE_DISABLED = False
    pyconify_cache._SVG_CACHE = pyconify_cache._SVGCache(folder / "svg_cache")
    pyconify_api.last_modified.cache_clear()
    # svg_path() remembers the files it wrote: in the previous folder, which may be gone
    pyconify_api.svg_path.cache_clear()
    session = pyconify_api._session()
    session.mount(ICONIFY_API, OfflineIconifyAdapter())
    return folder
