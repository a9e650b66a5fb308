"""Images and figures for people: channel composites and image files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["CHANNEL_COLORS", "composite_rgb", "save_channel_image", "save_section_figure"]

#: Display colour (RGB, 0–1) of each fluorophore channel.
CHANNEL_COLORS: dict[str, tuple[float, float, float]] = {
    "DAPI": (0.25, 0.45, 1.0),
    "tdTomato": (1.0, 0.25, 0.2),
}
_FALLBACK_COLORS = [(0.0, 1.0, 0.0), (1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0)]


def _display_range(image: np.ndarray, *, low_pct: float, high_pct: float) -> tuple[float, float]:
    lo, hi = np.percentile(image, [low_pct, high_pct])
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def composite_rgb(
    images: np.ndarray,
    channel_names: Sequence[str],
    *,
    low_pct: float = 0.5,
    high_pct: float = 99.8,
) -> np.ndarray:
    """Blend channels into one RGB image, each auto-scaled and coloured.

    Parameters
    ----------
    images : np.ndarray
        Shape (n_channels, H, W), any numeric dtype.
    channel_names : sequence of str
        Name of each channel; known fluorophores get their usual colour.
    low_pct, high_pct : float
        Percentiles of each channel mapped to black and full colour.

    Returns
    -------
    np.ndarray
        uint8, shape (H, W, 3).
    """
    if images.ndim != 3 or images.shape[0] != len(channel_names):
        raise ValueError(f"images must be (n_channels, H, W) with one name per channel, got {images.shape}")
    rgb = np.zeros((*images.shape[1:], 3), dtype=np.float32)
    for i, (image, name) in enumerate(zip(images, channel_names, strict=True)):
        lo, hi = _display_range(image, low_pct=low_pct, high_pct=high_pct)
        scaled = np.clip((image.astype(np.float32) - lo) / (hi - lo), 0, 1)
        color = CHANNEL_COLORS.get(name, _FALLBACK_COLORS[i % len(_FALLBACK_COLORS)])
        rgb += scaled[..., None] * np.asarray(color, dtype=np.float32)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_channel_image(
    path: str | Path,
    images: np.ndarray,
    channel_names: Sequence[str],
    *,
    pixel_size_um: float,
) -> Path:
    """Write channels as a TIFF (raw 16-bit, ImageJ hyperstack) or a PNG composite.

    Parameters
    ----------
    path : str or Path
        ``.tif``/``.tiff`` keeps the raw pixels (channels as the C axis, pixel
        size as resolution); ``.png`` writes an 8-bit RGB composite for viewing.
    images : np.ndarray
        Shape (n_channels, H, W), uint16.
    channel_names : sequence of str
        One name per channel.
    pixel_size_um : float
        Image pixel size (µm).

    Returns
    -------
    Path
        The file written.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(
            out,
            images,
            imagej=True,
            resolution=(1.0 / pixel_size_um, 1.0 / pixel_size_um),
            metadata={"axes": "CYX", "unit": "um", "Labels": list(channel_names)},
        )
    elif suffix == ".png":
        from skimage.io import imsave

        imsave(out, composite_rgb(images, channel_names), check_contrast=False)
    else:
        raise ValueError(f"unsupported image file type {suffix!r} for {out.name}: use .tif or .png")
    return out


def save_section_figure(
    path: str | Path,
    *,
    anatomy_mosaic: np.ndarray,
    mosaic_origin_um: Sequence[float],
    mosaic_pixel_um: float,
    pct_axonal_area_map: np.ndarray,
    map_origin_um: Sequence[float],
    map_bin_um: float,
    title: str,
) -> Path:
    """Write a PNG of a section's anatomy mosaic with its % axonal area heatmap.

    Parameters
    ----------
    path : str or Path
        PNG file to write.
    anatomy_mosaic : (H, W) float array
        Anatomy-channel mosaic; NaN where not imaged.
    mosaic_origin_um, mosaic_pixel_um :
        Stage position (µm) of the mosaic's top-left corner and its pixel size.
    pct_axonal_area_map : (ny, nx) float array
        % axonal area per bin; NaN outside imaged tissue.
    map_origin_um, map_bin_um :
        Stage position (µm) of the map's top-left corner and its bin size.
    title : str
        Figure title (section, animal, group, level).

    Returns
    -------
    Path
        The file written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    h, w = anatomy_mosaic.shape
    x0, y0 = (v / 1000.0 for v in mosaic_origin_um)
    extent = (x0, x0 + w * mosaic_pixel_um / 1000.0, y0 + h * mosaic_pixel_um / 1000.0, y0)
    finite = anatomy_mosaic[np.isfinite(anatomy_mosaic)]
    lo, hi = np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0)
    ny, nx = pct_axonal_area_map.shape
    mx0, my0 = (v / 1000.0 for v in map_origin_um)
    map_extent = (mx0, mx0 + nx * map_bin_um / 1000.0, my0 + ny * map_bin_um / 1000.0, my0)
    fig, ax = plt.subplots(figsize=(8, 6), dpi=120)
    ax.set_facecolor("black")
    ax.imshow(anatomy_mosaic, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    heat = np.ma.masked_invalid(pct_axonal_area_map)
    vmax = float(np.nanpercentile(pct_axonal_area_map, 99)) if np.isfinite(pct_axonal_area_map).any() else 1.0
    im = ax.imshow(heat, cmap="magma", alpha=0.65, vmin=0.0, vmax=max(vmax, 0.1), extent=map_extent)
    fig.colorbar(im, ax=ax, label=f"% axonal area ({map_bin_um:.0f} µm bins)")
    ax.set_xlabel("stage x (mm)")
    ax.set_ylabel("stage y (mm)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
