"""The array layer (vaeprobe.arrays) and the units helper (vaeprobe.units) against closed forms,
and the Dataset layer against them."""

import math

import numpy as np
import pytest
import torch

from vaeprobe import arrays, units
from vaeprobe.accumulate import Reducing, merge_all


def test_iwae_bound_and_ess_closed_forms():
    weights = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
    np.testing.assert_allclose(arrays.iwae_bound(weights.log()), np.log([3.0, 5.0]), rtol=1e-15)
    normalised = weights / weights.sum(1, keepdim=True)
    np.testing.assert_allclose(arrays.ess(weights.log()), 1 / (normalised ** 2).sum(1),
                               rtol=1e-14)
    assert arrays.ess(torch.tensor([[0.0, -1e4, -1e4]])).item() == pytest.approx(1.0)
    # L_K never exceeds log of the mean weight's bound: Jensen on one draw
    assert float(arrays.iwae_bound(weights.log()[:, :1]).sum()) <= float(
        arrays.iwae_bound(weights.log()).sum())


def test_rate_terms_sum_the_kl_maps():
    kl = [torch.rand(3, 2, 1, 1), torch.rand(3, 4, 2, 2)]
    terms = arrays.rate_terms(kl)
    assert terms["layer"].shape == (3, 2) and terms["channel"].shape == (3, 2, 4)
    np.testing.assert_allclose(terms["layer"][:, 1], kl[1].sum((1, 2, 3)).double(), rtol=1e-6)
    np.testing.assert_allclose(terms["channel"][:, 0, :2], kl[0][:, :, 0, 0].double())
    assert torch.isnan(terms["channel"][:, 0, 2:]).all()


@pytest.mark.parametrize("kind, n_bits, offset", [("dequantized", 8, 8.0),
                                                  ("dequantized", 5, 5.0),
                                                  ("discretized", 8, 0.0), ("none", 8, 0.0)])
def test_units_offsets(kind, n_bits, offset):
    assert units.bpd_offset(kind, n_bits) == offset
    dims = 3 * 4 * 4
    assert units.offset_nats(dims, kind, n_bits) == pytest.approx(offset * dims * math.log(2))
    # a uniform PMF over 2^n_bits levels: n_bits bits per dimension
    log_pmf = -dims * n_bits * math.log(2)
    assert units.nll_bpd(log_pmf, dims, "discretized") == pytest.approx(n_bits)
    # a density on [0, 1] that is uniform: log p = 0; + n_bits makes it the same bound
    assert units.nll_bpd(0.0, dims, kind, n_bits) == offset
    with pytest.raises(ValueError, match="likelihood kind must be one of"):
        units.bpd_offset("continuous")


def test_declared_reductions_merge_sum_cat_and_chan():
    class Stats(Reducing):
        states = {"n": "sum", "rows": "cat", ("count", "mean", "comoment"): "chan"}
        must_match = ("tag",)

        def __init__(self, values, tag="a"):
            flat = torch.as_tensor(values, dtype=torch.float64)[:, None]
            self.n, self.rows, self.tag = len(values), [flat], tag
            self.count, self.mean = len(values), flat.mean(0)
            self.comoment = (flat - self.mean).T @ (flat - self.mean)

    merged = merge_all([Stats([1.0, 2.0]), Stats([3.0]), Stats([4.0, 10.0])])
    everything = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0], dtype=torch.float64)
    assert merged.n == 5 and torch.equal(torch.cat(merged.rows)[:, 0], everything)
    assert float(merged.mean) == pytest.approx(float(everything.mean()), rel=1e-15)
    assert float(merged.comoment) == pytest.approx(float(((everything - 4.0) ** 2).sum()),
                                                   rel=1e-14)
    with pytest.raises(ValueError, match="different tag"):
        Stats([1.0]).merge(Stats([2.0], tag="b"))
