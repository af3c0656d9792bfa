"""vaeprobe.similarity against the libraries whose numbers it reproduces (scikit-image's SSIM,
pytorch-msssim's MS-SSIM), closed forms (PSNR of a known error), and block independence."""

import numpy as np
import pytest
import torch

from vaeprobe import similarity


def _pair(shape, spread=30, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    # a smooth image plus noise: flat regions (tiny variances) and edges both occur
    x = torch.nn.functional.avg_pool2d(x.float(), 5, stride=1, padding=2).round().byte()
    noise = torch.randint(-spread, spread + 1, shape, generator=generator)
    return x, (x.int() + noise).clamp(0, 255).byte()


def test_psnr_is_exact_for_a_known_error():
    x = torch.randint(10, 240, (3, 3, 9, 7), dtype=torch.uint8)
    for offset in (1, 5, 12):
        expected = 10 * np.log10(255 ** 2 / offset ** 2)
        np.testing.assert_allclose(similarity.psnr(x, x + offset).numpy(), expected, rtol=1e-14)
        # float images on [0, 1] with data_range 1 give the same
        scaled = similarity.psnr(x.double() / 255, (x + offset).double() / 255, 1)
        np.testing.assert_allclose(scaled.numpy(), expected, rtol=1e-9)
    assert torch.isinf(similarity.psnr(x, x)).all()


@pytest.mark.parametrize("shape", [(3, 3, 40, 33), (2, 1, 6, 9), (2, 3, 5, 5)])
def test_ssim_is_scikit_images_structural_similarity(shape):
    from skimage.metrics import structural_similarity

    x, y = _pair(shape)
    window = similarity.ssim_window(*shape[2:])  # 7, or shrunk to fit (skimage must be told)
    expected = [structural_similarity(a.numpy(), b.numpy(), data_range=255, channel_axis=0,
                                      win_size=window) for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(similarity.ssim(x, y).numpy(), expected, rtol=1e-12)
    # float input takes the float64 path: the same numbers
    np.testing.assert_allclose(similarity.ssim(x.double(), y.double()).numpy(), expected,
                               rtol=1e-12)
    np.testing.assert_allclose(similarity.ssim(x, x).numpy(), 1.0, rtol=1e-15)


def test_ms_ssim_is_pytorch_msssims_and_refuses_small_images():
    from pytorch_msssim import ms_ssim

    x, y = _pair((2, 3, 176, 190), spread=40)
    value = similarity.ms_ssim(x, y).numpy()
    same_dtype = ms_ssim(x.float(), y.float(), data_range=255, size_average=False).numpy()
    exact = ms_ssim(x.double(), y.double(), data_range=255, size_average=False).numpy()
    np.testing.assert_allclose(value, same_dtype, rtol=0, atol=2e-6)  # float32 sums, reordered
    np.testing.assert_allclose(value, exact, rtol=0, atol=1e-5)  # float32 vs float64
    assert ((0 < value) & (value < 1)).all()
    np.testing.assert_allclose(similarity.ms_ssim(x, x).numpy(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="at least 161x161"):
        similarity.ms_ssim(x[..., :160], y[..., :160])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        similarity.ssim(x, y[:1])


def test_blocks_do_not_change_a_result(monkeypatch):
    x, y = _pair((5, 3, 168, 168), spread=20, seed=3)
    whole = [f(x, y) for f in (similarity.ssim, similarity.ms_ssim)]
    monkeypatch.setattr(similarity, "CPU_BLOCK", 1)  # one image per block
    for f, expected in zip((similarity.ssim, similarity.ms_ssim), whole, strict=True):
        torch.testing.assert_close(f(x, y), expected, rtol=0, atol=0)
        torch.testing.assert_close(f(x[2:3], y[2:3]), expected[2:3], rtol=0, atol=0)


def test_sample_pixel_moments_are_the_float_mean_and_std():
    from vaeprobe.audit.generative import _pixel_moments

    images = torch.randint(0, 256, (5, 3, 17, 9), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(2))
    scaled = images.double() / 255
    mean, std = _pixel_moments(images)
    np.testing.assert_allclose([mean, std], [float(scaled.mean()), float(scaled.std())],
                               rtol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CPU/CUDA "
                    "agreement of the similarity metrics is checked where one is")
def test_the_metrics_agree_on_cpu_and_cuda():
    x, y = _pair((3, 3, 176, 176), spread=25, seed=5)
    for f in (similarity.psnr, similarity.ssim, similarity.ms_ssim):
        torch.testing.assert_close(f(x.cuda(), y.cuda()).cpu(), f(x, y), rtol=1e-6, atol=1e-6)
