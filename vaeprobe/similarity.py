"""Full-reference image similarity, batched where the images are: PSNR, SSIM and MS-SSIM.

Every function takes two image batches ``(N, C, H, W)`` of the same shape (uint8 or float, on the
same scale: ``data_range`` is the difference between its largest and smallest value, 255 for
uint8) and returns one float64 value per image, ``(N,)``, on the images' device. Nothing comes
back to the host here: the caller moves the per-image values when it needs them.

- :func:`psnr`: ``10 log10(data_range^2 / MSE)``, MSE over every pixel and channel (``inf`` for
  identical images); exact for integer images (the squared differences summed in int64).
- :func:`ssim`: SSIM (Wang et al. 2004) as ``skimage.metrics.structural_similarity`` computes it
  with its defaults: a uniform window (:func:`ssim_window`: 7 px, shrunk to fit), sample
  covariance, K1 0.01, K2 0.03, channels averaged, the border of half a window left out; in
  float64 (the tests compare it with scikit-image to 1e-12).
- :func:`ms_ssim`: MS-SSIM (Wang et al. 2003) as ``pytorch_msssim.ms_ssim`` computes it with its
  defaults: an 11-px Gaussian window (sigma 1.5), five scales with the published weights, 2x2
  average pooling between them, in float32 (3e-7 from float64 on Kodak crops); the images need
  at least ``MSSSIM_MIN_SIDE`` px a side (:func:`msssim_skip_reason`).

How they are computed: each separable window is applied as a sum of shifted slices (one
multiply-add per tap and axis) to the five maps ``x, y, x^2, y^2, xy`` stacked in one tensor.
On CPU that is about 15x faster than the grouped convolution pytorch-msssim runs, with the same
float32 sums. Images go in blocks of at most ``CPU_BLOCK``
bytes of stacked maps on CPU (temporaries that stay in the caches and in the allocator's heap:
larger ones are mapped fresh from the kernel on every operation, and that page-faulting cost
more than the arithmetic) and ``CUDA_BLOCK`` on CUDA; a block never changes a result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ms_ssim", "msssim_skip_reason", "psnr", "ssim", "ssim_window"]

SSIM_WINDOW = 7  # scikit-image's default side of the uniform window
MSSSIM_WINDOW = 11  # pytorch-msssim's Gaussian window (sigma MSSSIM_SIGMA)
MSSSIM_SIGMA = 1.5
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales
MSSSIM_MIN_SIDE = (MSSSIM_WINDOW - 1) * 2 ** 4 + 1  # smallest side its four downsamplings allow
K1, K2 = 0.01, 0.03
CPU_BLOCK = 2 ** 22  # bytes of stacked maps per block on CPU (4 MiB: within L3, often L2)
CUDA_BLOCK = 2 ** 31  # and on CUDA (2 GiB)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 255) -> torch.Tensor:
    """Per-image PSNR in dB (see the module docstring).

    Parameters
    ----------
    x, y : torch.Tensor
        Image batches ``(N, C, H, W)`` of one shape (``y`` is moved to ``x``'s device).
    data_range : float
        The difference between the largest and smallest value (255 for uint8 images).

    Returns
    -------
    torch.Tensor
        ``(N,)`` float64 on ``x``'s device.

    Examples
    --------
    >>> x = torch.full((1, 3, 8, 8), 100, dtype=torch.uint8)
    >>> round(float(psnr(x, x + 5)), 4)  # 10 log10(255^2 / 5^2)
    34.1514
    """
    _check_pair(x, y)
    y = y.to(x.device)
    if not x.is_floating_point() and not y.is_floating_point():
        diff = x.to(torch.int32) - y.to(torch.int32)
        total = (diff * diff).flatten(1).sum(1, dtype=torch.int64)  # exact
        mse = total.double() / diff[0].numel()
    else:
        mse = ((x.double() - y.double()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def ssim_window(height: int, width: int) -> int:
    """scikit-image's 7-pixel window, shrunk to the largest odd side that fits the image."""
    side = min(SSIM_WINDOW, height, width)
    return side if side % 2 else side - 1


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 255) -> torch.Tensor:
    """Per-image SSIM as scikit-image computes it (see the module docstring). For uint8
    images the window sums are taken in float32, where they are exact (at most 49 x 255^2 <
    2^24), and the rest in float64; other images in float64.

    Parameters
    ----------
    x, y : torch.Tensor
        Image batches ``(N, C, H, W)`` of one shape (``y`` is moved to ``x``'s device).
    data_range : float
        The difference between the largest and smallest value (255 for uint8 images).

    Returns
    -------
    torch.Tensor
        ``(N,)`` float64 on ``x``'s device.

    Examples
    --------
    >>> x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    >>> ssim(x, x).tolist()
    [1.0, 1.0]
    """
    _check_pair(x, y)
    window = ssim_window(*x.shape[-2:])
    exact = x.dtype == y.dtype == torch.uint8  # window <= 7: its sums stay below 2^24
    return _blocked(_ssim_block, x, y.to(x.device), torch.float32 if exact else torch.float64,
                    window=window, data_range=data_range)


def _ssim_block(x, y, *, window, data_range):
    area = window ** 2
    sums = _filtered_maps(x, y, torch.ones(window, dtype=torch.float64)).double()
    ux, uy, xx, yy, xy = sums.div_(area).unbind(0)
    scale = area / (area - 1)  # sample covariance
    vx = (xx - ux * ux).mul_(scale)
    vy = (yy - uy * uy).mul_(scale)
    vxy = (xy - ux * uy).mul_(scale)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(2).mean(2).mean(1)  # per channel, then channels averaged


def msssim_skip_reason(height: int, width: int) -> str:
    """Why MS-SSIM cannot be computed at this size ("" when it can)."""
    if min(height, width) >= MSSSIM_MIN_SIDE:
        return ""
    return (f"MS-SSIM needs images of at least {MSSSIM_MIN_SIDE}x{MSSSIM_MIN_SIDE} px for its "
            f"five scales with an {MSSSIM_WINDOW}-px window (pytorch-msssim); these are "
            f"{height}x{width}")


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 255) -> torch.Tensor:
    """Per-image MS-SSIM as pytorch-msssim computes it (see the module docstring); a
    ValueError, saying why, for images under ``MSSSIM_MIN_SIDE`` (161) px a side.

    Parameters
    ----------
    x, y : torch.Tensor
        Image batches ``(N, C, H, W)`` of one shape (``y`` is moved to ``x``'s device).
    data_range : float
        The difference between the largest and smallest value (255 for uint8 images).

    Returns
    -------
    torch.Tensor
        ``(N,)`` float64 on ``x``'s device.

    Examples
    --------
    >>> x = torch.randint(0, 256, (1, 3, 176, 176), dtype=torch.uint8)
    >>> round(float(ms_ssim(x, x)), 5)
    1.0
    """
    _check_pair(x, y)
    reason = msssim_skip_reason(*x.shape[-2:])
    if reason:
        raise ValueError(reason)
    coords = torch.arange(MSSSIM_WINDOW, dtype=torch.float32) - MSSSIM_WINDOW // 2
    taps = torch.exp(-(coords ** 2) / (2 * MSSSIM_SIGMA ** 2))
    taps /= taps.sum()  # pytorch-msssim's _fspecial_gauss_1d, in float32
    return _blocked(_msssim_block, x, y.to(x.device), torch.float32, taps=taps,
                    data_range=data_range).double()


def _msssim_block(x, y, *, taps, data_range):
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    factors = []
    for level in range(len(MSSSIM_WEIGHTS)):
        ux, uy, xx, yy, xy = _filtered_maps(x, y, taps).unbind(0)
        cs = (2 * (xy - ux * uy) + c2) / ((xx - ux * ux) + (yy - uy * uy) + c2)
        if level < len(MSSSIM_WEIGHTS) - 1:
            factors.append(torch.relu(cs.flatten(2).mean(-1)))
            padding = [side % 2 for side in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
        else:
            luminance = (2 * ux * uy + c1) / (ux * ux + uy * uy + c1)
            factors.append(torch.relu((luminance * cs).flatten(2).mean(-1)))
    stacked = torch.stack(factors)  # (level, image, channel)
    weights = stacked.new_tensor(MSSSIM_WEIGHTS).view(-1, 1, 1)
    return torch.prod(stacked ** weights, dim=0).mean(1)


def _filtered_maps(x: torch.Tensor, y: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """(5, N, C, H', W'): the window applied to x, y, x^2, y^2, xy ('valid': no padding)."""
    maps = torch.stack([x, y, x * x, y * y, x * y])
    return _separable(_separable(maps, taps, -1), taps, -2)


def _separable(maps: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """The 1-D window ``taps`` along ``dim``, as a sum of shifted slices ('valid')."""
    n = maps.shape[dim] - len(taps) + 1
    weights = taps.tolist()
    out = maps.narrow(dim, 0, n) * weights[0]
    for shift, weight in enumerate(weights[1:], start=1):
        out.add_(maps.narrow(dim, shift, n), alpha=weight)
    return out


def _blocked(block, x, y, dtype, **options) -> torch.Tensor:
    """``block`` over images in blocks bounded by bytes of stacked maps (module docstring)."""
    limit = CUDA_BLOCK if x.device.type == "cuda" else CPU_BLOCK
    per_image = 5 * x[0].numel() * torch.empty((), dtype=dtype).element_size()
    size = max(1, limit // per_image)
    parts = [block(a.to(dtype), b.to(dtype), **options)
             for a, b in zip(x.split(size), y.split(size), strict=True)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=x.device)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape != y.shape:
        raise ValueError(f"expected two image batches (N, C, H, W) of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
