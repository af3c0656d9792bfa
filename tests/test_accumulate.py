"""Every streaming accumulator: updating on A then B equals merging acc(A) with acc(B), and
both equal the one-shot closed form."""

import copy

import numpy as np
import pytest
import torch

from vaeprobe.accumulate import Accumulator, merge_all
from vaeprobe.fidelity import build_extractor
from vaeprobe.fidelity.quality import _KindAccumulator
from vaeprobe.pca import _Covariance
from vaeprobe.rate import Moments
from vaeprobe.spectrum import SpectrumAccumulator


def images(n, seed, shape=(3, 6, 5)):
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


A, B = images(5, 0), images(8, 1)


def sequential_and_merged(make, *batches):
    """(one accumulator updated on every batch in turn, one per batch merged in order)."""
    sequential = make()
    for batch in batches:
        sequential.update(batch)
    parts = []
    for batch in batches:
        parts.append(make())
        parts[-1].update(batch)
    return sequential, merge_all(parts)


def test_every_accumulator_follows_the_protocol():
    nets = [build_extractor("pixels-TEST-ONLY")]
    for accumulator in (Moments(), _Covariance(), SpectrumAccumulator("hann", "per_channel"),
                        _KindAccumulator(nets, keep=4)):
        assert isinstance(accumulator, Accumulator)


def test_moments_merge_and_match_numpy():
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64) + 2
    sequential, merged = sequential_and_merged(Moments, a, b)
    for left, right in zip(sequential.compute(), merged.compute(), strict=True):
        np.testing.assert_array_equal(left, right)
    both = torch.cat([a, b]).numpy()
    mean, se = merged.compute()
    np.testing.assert_allclose(mean, both.mean(0), rtol=1e-13)
    np.testing.assert_allclose(se, both.std(0, ddof=1) / np.sqrt(len(both)), rtol=1e-10)
    empty = Moments().merge(copy.deepcopy(merged))  # an empty rank changes nothing
    np.testing.assert_array_equal(empty.compute()[0], mean)


def test_covariance_merge_is_exact_and_matches_numpy():
    sequential, merged = sequential_and_merged(_Covariance, A, B, images(1, 2))
    both = torch.cat([A, B, images(1, 2)]).double().flatten(1).numpy() / 255.0
    for accumulator in (sequential, merged):
        mean, covariance = accumulator.compute()
        np.testing.assert_allclose(mean.numpy(), both.mean(0), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(covariance.numpy(), np.cov(both.T, bias=True), rtol=1e-11,
                                   atol=1e-15)
    for left, right in zip(sequential.compute(), merged.compute(), strict=True):
        torch.testing.assert_close(left, right, rtol=1e-13, atol=1e-16)
    alone = _Covariance()
    alone.update(A)
    untouched = copy.deepcopy(alone)
    alone.merge(_Covariance()).merge(_Covariance().merge(untouched))  # empties on either side
    torch.testing.assert_close(alone.compute()[1], untouched.compute()[1], rtol=0, atol=0)


def numpy_power(x: np.ndarray) -> np.ndarray:
    """Mean over images and channels of |orthonormal FFT|^2 of mean-removed, Hann-windowed
    images on the [0, 1] scale (window scaled to mean square 1)."""
    height, width = x.shape[-2:]
    window = np.outer(np.hanning(height), np.hanning(width))
    window /= np.sqrt((window ** 2).mean())
    planes = x.reshape(-1, height, width) / 255.0
    planes = (planes - planes.mean(axis=(1, 2), keepdims=True)) * window
    return (np.abs(np.fft.fft2(planes, norm="ortho")) ** 2).mean(0)


def test_spectrum_merge_and_numpy():
    def make():
        return SpectrumAccumulator("hann", "per_channel")
    sequential, merged = sequential_and_merged(make, A, B)
    assert sequential.count == merged.count == 13 * 3
    torch.testing.assert_close(sequential.total, merged.total, rtol=1e-14, atol=0)
    expected = numpy_power(torch.cat([A, B]).numpy())
    np.testing.assert_allclose((merged.total / merged.count).numpy(), expected, rtol=1e-10,
                               atol=1e-15)
    for left, right in zip(sequential.compute(), merged.compute(), strict=True):
        np.testing.assert_allclose(left, right, rtol=1e-14)


def test_merge_refuses_other_settings_and_other_analyses():
    with pytest.raises(ValueError, match="window"):
        SpectrumAccumulator("hann", "per_channel").merge(
            SpectrumAccumulator("kaiser", "per_channel"))
    with pytest.raises(TypeError, match="cannot merge"):
        Moments().merge(_Covariance())


class L2Distance:
    """A stand-in for LPIPS: mean squared difference per image pair."""

    trunk = "l2-test"

    def __call__(self, a, b):
        return ((a.double() - b.double()) ** 2).flatten(1).mean(1)


def test_kind_accumulator_merge_keeps_order():
    nets = [build_extractor("pixels-TEST-ONLY")]
    real_a, real_b = images(5, 3), images(8, 4)

    def make():
        return _KindAccumulator(nets, keep=7, lpips=L2Distance())
    sequential = make()
    sequential.update(A, real_a)
    sequential.update(B, real_b)
    first, second = make(), make()
    first.update(A, real_a)
    second.update(B, real_b)
    merged = first.merge(second).compute()
    expected = sequential.compute()
    torch.testing.assert_close(merged["kept"], expected["kept"], rtol=0, atol=0)
    torch.testing.assert_close(merged["lpips"], expected["lpips"], rtol=0, atol=0)
    # one-shot truth: features of the images in order, the first `keep` images, distances
    both = torch.cat([A, B])
    name = nets[0].name
    torch.testing.assert_close(merged["features"][name], both.double().flatten(1),
                               rtol=0, atol=0)
    torch.testing.assert_close(merged["kept"], both[:7], rtol=0, atol=0)
    torch.testing.assert_close(merged["lpips"], L2Distance()(both, torch.cat([real_a, real_b])))
    with pytest.raises(ValueError, match="settings"):
        make().merge(_KindAccumulator(nets, keep=3))
