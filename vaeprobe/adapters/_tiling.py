"""Tiled encoding and decoding, as diffusers' ``AutoencoderKL`` does them (``enable_tiling``).

An image too large to pass through a convolutional autoencoder at once is cut into square
tiles of ``tile`` pixels that overlap by a quarter (diffusers' ``tile_overlap_factor = 0.25``):
tiles start every ``int(tile * 0.75)`` pixels. Each tile is encoded (or decoded) on its own;
the outputs are blended where they overlap, linearly over ``int(tile_out * 0.25)`` rows and
then columns (diffusers' ``blend_v`` / ``blend_h``: the tile above and the tile to the left fade
out as the current tile fades in), cropped to ``tile_out - blend`` and concatenated. Encoding
blends in latent space (the encoder's moments, before the log-variance clamp); decoding blends
in pixel space. Peak memory then follows the tile, not the image.

The result differs from the untiled pass: every tile has its own GroupNorm statistics and its
own attention context. :func:`vaeprobe.tiling_error` measures by how much.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

OVERLAP = 0.25  # diffusers' AutoencoderKL.tile_overlap_factor


def blend(previous: torch.Tensor, tile: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Fade ``previous``'s last ``extent`` rows (``dim=2``) or columns (``dim=3``) into
    ``tile``'s first ones, in place: weight ``y / extent`` on the tile, as diffusers'
    ``blend_v`` / ``blend_h``. Returns ``tile``."""
    extent = min(previous.shape[dim], tile.shape[dim], extent)
    if extent <= 0:
        return tile
    shape = [1] * tile.ndim
    shape[dim] = extent
    weight = (torch.arange(extent, device=tile.device, dtype=torch.float64) / extent)
    weight = weight.to(tile.dtype).view(shape)
    head = tile.narrow(dim, 0, extent)
    tail = previous.narrow(dim, previous.shape[dim] - extent, extent)
    head.copy_(tail * (1 - weight) + head * weight)
    return tile


def tile_starts(size: int, tile: int) -> list[int]:
    """Where tiles of ``tile`` pixels start along a side of ``size``: every ``tile * 0.75``."""
    return list(range(0, size, int(tile * (1 - OVERLAP))))


def tiled(x: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor], tile: int,
          tile_out: int) -> torch.Tensor:
    """``function`` applied to overlapping ``tile`` x ``tile`` tiles of ``x`` (B, C, H, W) and
    blended: diffusers' ``_tiled_encode`` (``tile_out`` = tile / f) and ``tiled_decode`` (``x``
    a latent, ``tile`` its latent tile, ``tile_out`` = tile * f)."""
    extent = int(tile_out * OVERLAP)
    limit = tile_out - extent  # each tile keeps its first `limit` rows and columns
    rows = [[function(x[:, :, top:top + tile, left:left + tile])
             for left in tile_starts(x.shape[3], tile)]
            for top in tile_starts(x.shape[2], tile)]
    out_rows = []
    for i, row in enumerate(rows):
        for j, out in enumerate(row):
            if i > 0:
                blend(rows[i - 1][j], out, extent, dim=2)
            if j > 0:
                blend(row[j - 1], out, extent, dim=3)
        out_rows.append(torch.cat([out[:, :, :limit, :limit] for out in row], dim=3))
    return torch.cat(out_rows, dim=2)


def count_tiles(height: int, width: int, tile: int) -> int:
    """How many tiles :func:`tiled` cuts an image of ``height`` x ``width`` into."""
    return len(tile_starts(height, tile)) * len(tile_starts(width, tile))


def check_tile_size(tile_size: int, factor: int) -> int:
    """``tile_size`` if it is a positive multiple of ``4 * factor`` (then the blended tiles add
    up to exactly H x W and H / f x W / f); else a ValueError naming the nearest valid sizes."""
    multiple = 4 * factor
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < multiple \
            or tile_size % multiple:
        below = max(multiple, (int(tile_size) // multiple) * multiple) \
            if isinstance(tile_size, int | float) else multiple
        raise ValueError(
            f"tile_size must be a positive multiple of {multiple} (4 x the downsampling factor "
            f"{factor}, so that the overlapping tiles add up exactly), got {tile_size!r}; e.g. "
            f"{below} or {below + multiple}, or 'auto' (the config's sample_size)")
    return tile_size
