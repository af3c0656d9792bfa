import math

import pytest
import torch

from vaeprobe.models.likelihoods import (
    DiscretizedGaussian,
    DiscretizedLogisticMixture,
    LikelihoodHead,
)

LEVELS = torch.arange(256, dtype=torch.uint8)


@pytest.mark.parametrize("loc, sigma", [(0.5, 0.2), (0.01, 1e-3), (1.3, 0.05), (-0.2, 1.0),
                                        (0.4, 1e-5)])
def test_discretized_gaussian_is_a_pmf(loc, sigma):
    x = LEVELS.reshape(256, 1, 1, 1)
    dist = DiscretizedGaussian(torch.full((256, 1, 1, 1), loc),
                               torch.tensor(math.log(sigma)), "fixed")
    total = dist.log_prob(x, dtype=torch.float64).exp().sum()
    assert abs(float(total) - 1.0) < 1e-9
    # the evaluation default: float32 per pixel (float64 where a bin is small), float64 sums
    assert abs(float(dist.log_prob(x).exp().sum()) - 1.0) < 1e-5


def test_discretized_gaussian_matches_cdf_differences():
    dist = DiscretizedGaussian(torch.full((1, 1, 1, 1), 0.3), torch.tensor(math.log(0.1)), "x")
    x = torch.full((1, 1, 1, 1), 100, dtype=torch.uint8)
    normal = torch.distributions.Normal(torch.tensor(0.3, dtype=torch.float64), 0.1)
    expected = normal.cdf(torch.tensor(100.5 / 255)) - normal.cdf(torch.tensor(99.5 / 255))
    assert torch.allclose(dist.log_prob(x, dtype=torch.float64).exp(), expected.reshape(1),
                          rtol=1e-9)
    assert torch.allclose(dist.log_prob(x).exp(), expected.reshape(1), rtol=1e-6)


def _dmol_params(channels, mixtures, generator):
    per = 1 + 2 * channels + (3 if channels == 3 else 0)
    return torch.randn(1, mixtures * per, 1, 1, generator=generator, dtype=torch.float64)


def test_dmol_grey_is_a_pmf():
    generator = torch.Generator().manual_seed(0)
    params = _dmol_params(1, 5, generator).expand(256, -1, -1, -1)
    dist = DiscretizedLogisticMixture(params, 1, 5)
    assert abs(float(dist.log_prob(LEVELS.reshape(256, 1, 1, 1)).exp().sum()) - 1) < 1e-9


def test_dmol_rgb_joint_is_a_pmf():
    """All 256^3 colours of one pixel (channel-autoregressive coefficients) sum to one."""
    generator = torch.Generator().manual_seed(1)
    params = _dmol_params(3, 2, generator)
    red, green = torch.meshgrid(LEVELS, LEVELS, indexing="ij")
    total = 0.0
    for blue in range(256):  # chunks of 65536 colours
        x = torch.stack([red.flatten(), green.flatten(), torch.full((65536,), blue,
                        dtype=torch.uint8)], 1).reshape(-1, 3, 1, 1)
        dist = DiscretizedLogisticMixture(params.expand(len(x), -1, -1, -1), 3, 2)
        total += float(dist.log_prob(x).exp().sum())
    assert abs(total - 1) < 1e-7


def test_dmol_mean_matches_monte_carlo():
    generator = torch.Generator().manual_seed(2)
    params = _dmol_params(3, 3, generator).float()
    params[:, 3:] *= 0.3  # component means and scales well inside [-1, 1]: no edge clipping
    params[:, 12:21] -= 2.0
    params = params.expand(20000, -1, -1, -1)
    dist = DiscretizedLogisticMixture(params, 3, 3)
    samples = dist.sample(torch.Generator().manual_seed(3)).float() / 255
    assert torch.allclose(samples.mean(0), dist.mean[0], atol=0.02)


def test_gaussian_sampling_is_the_discretized_distribution():
    dist = DiscretizedGaussian(torch.full((50000, 1, 1, 1), 0.02), torch.tensor(math.log(0.05)),
                               "fixed")
    samples = dist.sample(torch.Generator().manual_seed(0))
    p0 = float(dist.log_prob(torch.zeros(1, 1, 1, 1, dtype=torch.uint8))[0].exp())
    assert abs(float((samples == 0).float().mean()) - p0) < 0.01  # the edge bin takes the tail


def test_optimal_sigma_is_the_rms_error():
    target = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    loc = torch.rand(4, 3, 8, 8)
    rms = ((target.float() / 255 - loc) ** 2).mean().sqrt()
    assert torch.allclose(LikelihoodHead.optimal_log_sigma(loc, target).exp(), rms, rtol=1e-5)
    # and it maximises the Gaussian density over a shared sigma
    def density(log_sigma):
        return DiscretizedGaussian(loc, log_sigma, "x").log_prob(target, "dequantized",
                                                                 torch.Generator().manual_seed(0))
    best = LikelihoodHead.optimal_log_sigma(loc, target)
    for delta in (-0.05, 0.05):
        assert density(best).sum() > density(best + delta).sum()


def test_dequantized_density_integrates_to_one_on_unit_interval():
    """Grey 1-pixel density on [0,1] (mass outside [0,1] is what is lost): trapezoid sum."""
    dist = DiscretizedGaussian(torch.full((1, 1, 1, 1), 0.5), torch.tensor(math.log(0.05)), "x")
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    log_density = (-0.5 * ((grid - 0.5) / 0.05) ** 2 - math.log(0.05)
                   - 0.5 * math.log(2 * math.pi))
    assert abs(float(torch.trapezoid(log_density.exp(), grid)) - 1) < 1e-6
    x = torch.full((1, 1, 1, 1), 128, dtype=torch.uint8)
    assert dist.log_prob(x, "dequantized").shape == (1,)


def test_heads_and_bad_kinds():
    features = torch.randn(2, 8, 4, 4)
    for kind in ("fixed", "learned", "optimal", "per_pixel", "dmol"):
        dist = LikelihoodHead(kind, 8, 3)(features)
        assert dist.mean.shape == (2, 3, 4, 4) and dist.mean.min() >= 0 and dist.mean.max() <= 1
        assert dist.sample().dtype == torch.uint8
    with pytest.raises(ValueError, match="likelihood must be one of"):
        LikelihoodHead("bernoulli", 8, 3)
    with pytest.raises(ValueError, match="'discretized' or 'dequantized'"):
        LikelihoodHead("fixed", 8, 3)(features).log_prob(torch.zeros(2, 3, 4, 4,
                                                                     dtype=torch.uint8), "pmf")
    learned = LikelihoodHead("learned", 8, 3)
    with torch.no_grad():
        learned.log_sigma.fill_(-20.0)
    assert float(learned(features).log_sigma.detach().min()) >= -6.0  # soft-clipped from below


@pytest.mark.parametrize("sigma, offset", [(0.01, 0.0), (0.1, 0.0), (1.0, 0.0), (0.3, 2.0),
                                           (0.03, 0.5)])
def test_discretized_gaussian_in_float32_against_float64(sigma, offset):
    """The measured cost of float32 per-pixel log-probabilities (the evaluation default): on
    smooth 64x64 images with a blurred mean, a relative error of log p(x) below 1e-6 (under
    1e-5 bits/dim where the mean fits). ``offset`` 2.0 puts every pixel 4-7 sigma out, where a
    plain float32 difference of two erf cancels (3.5e-2 relative error without the float64
    redo of small bins)."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 3, 64, 64, generator=generator)
    smooth = torch.nn.functional.avg_pool2d(noise, 9, stride=1, padding=4)
    x = ((smooth / smooth.std() * 0.2 + 0.5).clamp(0, 1) * 255).round().byte()
    loc = torch.nn.functional.avg_pool2d(x.float() / 255, 4).repeat_interleave(4, -1)
    loc = loc.repeat_interleave(4, -2) + offset
    dist = DiscretizedGaussian(loc, torch.tensor(math.log(sigma)), "fixed")
    single, double = dist.log_prob(x), dist.log_prob(x, dtype=torch.float64)
    assert single.dtype == torch.float64
    relative = ((single - double) / double).abs().max()
    bits_per_dim = ((single - double).abs() / x[0].numel() / math.log(2)).max()
    assert relative < 1e-6, float(relative)
    assert offset or bits_per_dim < 1e-5, float(bits_per_dim)


@pytest.mark.parametrize("loc", [0.0, 0.5, 1.0, 3.0, -2.0])
def test_discretized_gaussian_edge_bins_are_the_tails(loc):
    sigma = 0.05
    dist = DiscretizedGaussian(torch.full((2, 1, 1, 1), loc, dtype=torch.float64),
                               torch.tensor(math.log(sigma)), "x")
    x = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1)
    normal = torch.distributions.Normal(torch.tensor(loc, dtype=torch.float64), sigma)
    expected = torch.stack([normal.cdf(torch.tensor(0.5 / 255, dtype=torch.float64)),
                            1 - normal.cdf(torch.tensor(254.5 / 255, dtype=torch.float64))])
    got = dist.log_prob(x, dtype=torch.float64)
    finite = expected > 1e-300
    torch.testing.assert_close(got[finite], expected[finite].log(), rtol=1e-9, atol=1e-9)


def test_log_bin_probability_equals_the_tail_stable_interval():
    """The erf fast path against log_normal_interval (log_ndtr), across widths, the tails and
    the edge bins (infinite ends)."""
    from vaeprobe.models.likelihoods import log_bin_probability, log_normal_interval

    centre = torch.linspace(-40, 40, 20001, dtype=torch.float64)
    for width in (1e-3, 0.0039, 0.039, 0.5, 3.0):
        lower, upper = centre - width / 2, centre + width / 2
        for lo, hi in ((lower, upper), (torch.full_like(lower, -math.inf), upper),
                       (lower, torch.full_like(upper, math.inf))):
            fast, stable = log_bin_probability(lo, hi), log_normal_interval(lo, hi)
            assert torch.isfinite(stable).all()
            torch.testing.assert_close(fast, stable, rtol=1e-8, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CPU/CUDA "
                    "agreement of the float32 log-probabilities is checked where one is")
def test_discretized_gaussian_log_prob_agrees_on_cpu_and_cuda():
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=generator)
    loc = torch.rand(4, 3, 32, 32, generator=generator)
    for sigma in (0.003, 0.1, 1.0):
        dist = DiscretizedGaussian(loc, torch.tensor(math.log(sigma)), "fixed")
        on_gpu = DiscretizedGaussian(loc.cuda(), torch.tensor(math.log(sigma)).cuda(), "fixed")
        torch.testing.assert_close(on_gpu.log_prob(x.cuda()).cpu(), dist.log_prob(x),
                                   rtol=1e-6, atol=1e-3)


def test_discretized_gaussian_with_a_sigma_per_pixel_in_float32_against_float64():
    """A per-pixel sigma (the per_pixel head) takes the same float32 path pixel by pixel:
    narrow bins by the series, wide and edge bins by CDF differences."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (3, 3, 24, 24), dtype=torch.uint8, generator=generator)
    loc = torch.rand(3, 3, 24, 24, generator=generator)
    log_sigma = torch.empty(3, 3, 24, 24).uniform_(math.log(0.002), math.log(2.0),
                                                   generator=generator)
    dist = DiscretizedGaussian(loc, log_sigma, "per_pixel")
    single, double = dist.log_prob(x), dist.log_prob(x, dtype=torch.float64)
    torch.testing.assert_close(single, double, rtol=1e-6, atol=0)


@pytest.mark.parametrize("sigma", [0.003, 0.05, 0.3])
def test_the_device_path_without_host_reads_equals_the_gathering_one(sigma):
    """Off CPU the bins the series does not serve are selected from a dense float64 pass
    instead of gathered (no host read); both give the same log p(x)."""
    from vaeprobe.models.gaussian_bins import series_log_prob
    from vaeprobe.models.likelihoods import HALF_BIN

    generator = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8, generator=generator)
    loc = torch.rand(3, 3, 20, 20, generator=generator) * 1.4 - 0.2  # edge and far-out bins
    centre = (x.float() / 255 - loc) / sigma
    half = torch.tensor(HALF_BIN / sigma)
    gathered = series_log_prob(x, centre, half, dense=False)
    dense = series_log_prob(x, centre, half, dense=True)
    torch.testing.assert_close(dense, gathered, rtol=1e-7, atol=0)
