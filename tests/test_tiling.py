"""Tiled encoding and decoding (diffusers' enable_tiling) and the tiling error."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vaeprobe as vp
from vaeprobe.adapters._tiling import count_tiles, tiled
from vaeprobe.adapters.diffusers import AutoencoderKL, AutoencoderKLConfig, AutoencoderKLProbe
from vaeprobe.probe import UndefinedAnalysisError

DIFFUSERS = Path(__file__).parent / "fixtures" / "diffusers" / "tiny_vae"
# tiled against untiled reconstructions of SMALL_VAE on 96x96 noise with 64 px tiles (4 tiles):
# measured 28.9 dB PSNR, max abs 0.30 ([0, 1] scale); random weights make tiling worse than it
# is for trained models (per-tile GroupNorm statistics and attention context differ more)
TOLERANCE_DB = 25.0


def _uint8(shape, seed=0):
    return torch.randint(0, 256, shape, dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def small_vae(widths=(8, 16), groups=4, attention=True, seed=0) -> AutoencoderKL:
    n = len(widths)
    config = AutoencoderKLConfig(block_out_channels=widths, norm_num_groups=groups,
                                 down_block_types=("DownEncoderBlock2D",) * n,
                                 up_block_types=("UpDecoderBlock2D",) * n, latent_channels=4,
                                 mid_block_add_attention=attention, sample_size=32)
    torch.manual_seed(seed)
    return AutoencoderKL(config)


class _Counted:
    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, x):
        self.calls += 1
        return self.function(x)


def test_tiles_add_up_exactly_for_local_functions():
    """Blending identical overlaps changes nothing: for a function that sees only its own
    block of pixels (a pooling, an upsampling), tiled equals untiled exactly."""
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    pool = _Counted(lambda t: F.avg_pool2d(t, 4))
    torch.testing.assert_close(tiled(x, pool, 16, 4), F.avg_pool2d(x, 4), rtol=0, atol=1e-6)
    assert pool.calls == count_tiles(40, 56, 16) == 4 * 5  # tiles start every 12 px
    z = torch.rand(2, 3, 10, 14, generator=torch.Generator().manual_seed(1))
    upsample = _Counted(lambda t: F.interpolate(t, scale_factor=4.0, mode="nearest"))
    torch.testing.assert_close(tiled(z, upsample, 4, 16),
                               F.interpolate(z, scale_factor=4.0, mode="nearest"), rtol=0,
                               atol=1e-6)
    assert upsample.calls == count_tiles(10, 14, 4)


def test_tiling_equals_diffusers_enable_tiling():
    diffusers = pytest.importorskip("diffusers")
    from safetensors.torch import load_file

    vae = diffusers.AutoencoderKL.from_config(json.loads((DIFFUSERS / "config.json").read_text()))
    vae.load_state_dict(load_file(DIFFUSERS / "diffusion_pytorch_model.safetensors"))
    vae.eval().enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = 8, 4  # f = 2
    x = _uint8((2, 3, 32, 44))
    with torch.no_grad():
        posterior = vae.encode(x.float() / 127.5 - 1).latent_dist
        reference = (vae.decode(posterior.mode()).sample + 1) / 2
    probe = vp.load(DIFFUSERS, device="cpu", tile_size=8).at_image_size(32, 44)
    calls = {"encoder": 0, "decoder": 0}
    hooks = [getattr(probe.model, name).register_forward_hook(
        lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        for name in calls]
    latents = probe.encode(x, posterior="mean")
    mean = probe.decode(latents).mean
    for hook in hooks:
        hook.remove()
    assert calls == {"encoder": count_tiles(32, 44, 8), "decoder": count_tiles(16, 22, 4)}
    torch.testing.assert_close(latents.draws[0].q_mean, posterior.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(latents.draws[0].q_logstd, 0.5 * posterior.logvar, rtol=0,
                               atol=1e-5)
    torch.testing.assert_close(mean, reference.clamp(0, 1), rtol=0, atol=1e-5)


def test_tiled_against_untiled_within_tolerance():
    probe = AutoencoderKLProbe(small_vae(), (96, 96), "cpu", {"checkpoint": "small"},
                               tile_size=64)
    x = _uint8((2, 3, 96, 96))
    ds = vp.tiling_error(probe, x, n_images=None)
    assert ds.sizes == {"image": 2} and ds.attrs["n_tiles"] == 4
    assert ds.attrs["tile_size"] == 64 and ds.attrs["tile_overlap"] == 0.25
    assert all("units" in ds[name].attrs for name in ds.data_vars)
    assert float(ds.psnr_min) >= TOLERANCE_DB
    assert 0 < float(ds.max_abs_difference_max) < 0.5  # it did tile, and stays close
    # the numbers are what they say: recompute them from the two reconstructions
    means = [p.decode(p.encode(x, posterior="mean")).mean.double()
             for p in (probe, probe.with_tiling(0))]
    mse = ((means[0] - means[1]) ** 2).flatten(1).mean(1)
    np.testing.assert_allclose(ds.psnr.values, -10 * np.log10(mse.numpy()), rtol=1e-5)
    np.testing.assert_allclose(ds.max_abs_difference.values,
                               (means[0] - means[1]).abs().flatten(1).max(1).values.numpy(),
                               rtol=1e-3)
    # a tile as large as the image tiles nothing: identical reconstructions
    whole = vp.tiling_error(probe, x, tile_size=96, n_images=1)
    assert float(whole.max_abs_difference_max) == 0 and math.isinf(float(whole.psnr_min))


def test_tile_size_is_checked_and_recorded():
    with pytest.raises(ValueError, match=r"multiple of 8 \(4 x the downsampling factor 2.*"
                                         r"e\.g\. 8 or 16"):
        vp.load(DIFFUSERS, device="cpu", tile_size=12)
    probe = vp.load(DIFFUSERS, device="cpu", tile_size="auto")  # the config's sample_size
    assert probe.tile_size == 16 and probe.source["tile_size"] == 16
    ds = vp.rate(probe.at_image_size(32, 32), _uint8((2, 3, 32, 32)), progress=False)
    assert ds.attrs["tile_size"] == 16 and json.loads(ds.attrs["options"]) == {"tile_size": "auto"}
    with pytest.raises(UndefinedAnalysisError, match="does not tile"):
        vp.tiling_error(vp.Probe.from_module(_FlatVAE(), image_shape=(1, 4, 4), device="cpu"),
                        _uint8((1, 1, 4, 4)))


class _FlatVAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = torch.nn.Linear(16, 4), torch.nn.Linear(2, 16)

    def encode(self, x):
        return self.encoder(x.flatten(1)).chunk(2, dim=1)

    def decode(self, z):
        return torch.sigmoid(self.decoder(z))


def test_batches_run_in_chunks_of_rows_per_pass(monkeypatch):
    """Memory follows the image, not the batch: a probe of big images passes a few at a time."""
    probe = AutoencoderKLProbe(small_vae(), (32, 32), "cpu", {"checkpoint": "small"})
    x = _uint8((3, 3, 32, 32))
    whole = probe.decode(probe.encode(x, posterior="mean")).mean
    calls = []
    hook = probe.model.encoder.register_forward_hook(lambda *_: calls.append(1))
    monkeypatch.setattr(probe, "rows_per_pass", lambda: 1)
    chunked = probe.decode(probe.encode(x, posterior="mean")).mean
    hook.remove()
    assert len(calls) == 3
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    sd_like = AutoencoderKLProbe(small_vae(widths=(128, 128), groups=32), (512, 768), "cpu")
    assert sd_like.rows_per_pass() == 1 and sd_like.with_tiling(256).rows_per_pass() == 2
