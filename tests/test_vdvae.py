"""The vdvae adapter against openai/vdvae's own outputs (tests/fixtures/vdvae, made by its
make_fixture.py from openai/vdvae's vae.py on a tiny random model)."""

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import vaeprobe as vp
from vaeprobe.adapters import formats
from vaeprobe.adapters.vdvae import VDVAEProbe, open_vdvae, sniff
from vaeprobe.io import CheckpointError
from vaeprobe.models.likelihoods import DiscretizedLogisticMixture
from vaeprobe.models.vdvae import NAMED_HPARAMS, VDVAE, hparams_from
from vaeprobe.random import image_generators

FIXTURE = Path(__file__).parent / "fixtures" / "vdvae"
HPARAMS = FIXTURE / "hparams.json"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE / "reference.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def probe():
    return formats.get("vdvae")(FIXTURE / "latest-model-ema.th", hparams=str(HPARAMS),
                                device="cpu")


def _inject(probe, reference, prefix, monkeypatch):
    """Make the probe's standard normal draws the recorded ones."""
    noise = [torch.from_numpy(reference[f"{prefix}{i}"]) for i in range(len(probe.layers))]
    monkeypatch.setattr(probe, "noise", lambda rows, k, generator, posterior="sample": noise)


def _max_diff(ours, theirs) -> float:
    return float(np.abs(np.asarray(ours, dtype=np.float64) - theirs).max())


def test_parity_posterior_pass(probe, reference, monkeypatch):
    """Per-layer z and KL, NLL/dim, rate/dim and ELBO/dim equal openai/vdvae's to 1e-5."""
    _inject(probe, reference, "eps_", monkeypatch)
    x = torch.from_numpy(reference["images"])
    latents = probe.encode(x)
    for index, draw in enumerate(latents.draws):
        assert _max_diff(draw.z, reference[f"z_{index}"]) < TOLERANCE
        assert _max_diff(draw.kl, reference[f"kl_{index}"]) < TOLERANCE
    dims = math.prod(probe.image_shape)
    nll = -probe.decode(latents).log_prob(x).numpy() / dims
    rate = latents.kl_per_layer().double().sum(1).numpy() / dims
    assert _max_diff(nll, reference["nll_per_dim"]) < TOLERANCE
    assert _max_diff(rate, reference["rate_per_dim"]) < TOLERANCE
    assert _max_diff(nll + rate, reference["elbo_per_dim"]) < TOLERANCE
    # VDVAE's own float32 run differs from its float64 loss by its rounding only
    assert abs((nll + rate).mean() - reference["elbo_forward"]) < 1e-4
    # decoding the z's alone (no cached features) is the same decoder
    alone = vp.LatentPass([type(d)(d.p_mean, d.p_logstd, d.z) for d in latents.draws])
    assert _max_diff(-probe.decode(alone).log_prob(x).numpy() / dims, nll) < 1e-6


def test_parity_trained_weights_with_ddp_prefix(reference, monkeypatch):
    """ema=False in the folder opens latest-model.th, whose keys carry DDP's 'module.'."""
    keys = torch.load(FIXTURE / "latest-model.th", weights_only=True).keys()
    assert all(k.startswith("module.") for k in keys)
    probe = open_vdvae(FIXTURE, hparams=str(HPARAMS), ema=False, device="cpu")
    assert probe.source["checkpoint"].endswith("latest-model.th") and probe.source["ema"] == 0
    _inject(probe, reference, "eps_", monkeypatch)
    x = torch.from_numpy(reference["images"])
    latents = probe.encode(x)
    elbo = (-probe.decode(latents).log_prob(x) + latents.kl_per_layer().double().sum(1)) / 192
    assert _max_diff(elbo, reference["elbo_model_per_dim"]) < TOLERANCE


def test_parity_prior_pass_with_temperature(probe, reference, monkeypatch):
    _inject(probe, reference, "prior_eps_", monkeypatch)
    x = torch.from_numpy(reference["images"][:2])
    latents = probe.sample_prior(2, temperature=float(reference["temperature"]))
    nll = -probe.decode(latents).log_prob(x).numpy() / 192
    assert _max_diff(nll, reference["prior_nll_per_dim"]) < TOLERANCE


def test_state_dict_keys_of_every_named_set():
    """Our model for each of VDVAE's sets has its exact keys and shapes (meta device)."""
    facts = json.loads((FIXTURE / "named_sets.json").read_text())
    assert sorted(facts) == sorted(NAMED_HPARAMS)
    for name, expected in facts.items():
        with torch.device("meta"):
            state = VDVAE(hparams_from(name)).state_dict()
        lines = "\n".join(sorted(f"{k} {tuple(v.shape)}" for k, v in state.items()))
        assert hashlib.sha256(lines.encode()).hexdigest() == expected["sha256"], name
        assert sum(v.numel() for v in state.values()) == expected["n_params"]
    assert hparams_from("ffhq256").n_bits == 5 and hparams_from("cifar10").n_bits == 8


def test_encode_shares_work_and_is_batch_free(probe):
    x = torch.from_numpy(np.load(FIXTURE / "reference.npz")["images"])
    whole = probe.encode(x, 4, image_generators(0, range(3)))
    # one image alone gets the same draws as in a batch (rows image-major)
    alone = probe.encode(x[1:2], 4, image_generators(0, [1]))
    assert torch.allclose(alone.draws[-1].z, whole.draws[-1].z[4:8], atol=1e-6)
    # chunks share one bottom-up pass and give the draws of one pass
    chunks = list(probe.encode_chunks(x, 4, 3, image_generators(0, range(3))))
    assert [c.n_samples for c in chunks] == [3, 1]
    for layer, draw in enumerate(whole.draws):
        joined = torch.cat([c.draws[layer].kl.reshape(3, c.n_samples, -1) for c in chunks], 1)
        assert torch.allclose(joined, draw.kl.reshape(3, 4, -1), atol=1e-6)
    mean = probe.encode(x, posterior="mean")
    assert all(torch.equal(d.z, d.q_mean) for d in mean.draws)


def test_prior_given_keeps_the_layers_above_and_draws_the_rest(probe):
    x = torch.from_numpy(np.load(FIXTURE / "reference.npz")["images"])
    latents = probe.encode(x, 1, image_generators(0, range(3)))
    n = len(probe.layers)
    kept = probe.sample_prior_given(latents, n, generator=image_generators(1, range(3)))
    torch.testing.assert_close(probe.decode(kept).mean, probe.decode(latents).mean,
                               rtol=0, atol=1e-6)
    half = probe.sample_prior_given(latents, n // 2, generator=image_generators(1, range(3)))
    assert all(torch.equal(a.z, b.z) for a, b in zip(half.draws[:n // 2],
                                                     latents.draws[:n // 2], strict=True))
    assert not torch.allclose(half.draws[-1].z, latents.draws[-1].z)
    none_kept = probe.sample_prior_given(latents, 0, generator=image_generators(1, range(3)))
    prior = probe.sample_prior(3, generator=image_generators(1, range(3)))
    assert all(torch.equal(a.z, b.z) for a, b in zip(none_kept.draws, prior.draws, strict=True))


def test_likelihood_outputs(probe):
    x = torch.from_numpy(np.load(FIXTURE / "reference.npz")["images"])
    likelihood = probe.decode(probe.sample_prior(3, 0.5, torch.Generator().manual_seed(0)))
    assert likelihood.mean.shape == x.shape and 0 <= likelihood.mean.min() <= 1
    assert likelihood.mean.max() <= 1
    sample = likelihood.sample(torch.Generator().manual_seed(1))
    assert sample.dtype == torch.uint8 and sample.shape == x.shape


def test_vdvae_layout_equals_ours_permuted():
    """VDVAE's channel layout, permuted into ours, gives the same distribution."""
    m = 3
    params = torch.randn(2, 10 * m, 4, 4, generator=torch.Generator().manual_seed(0))
    per_channel = params[:, m:].reshape(2, 3, 3, m, 4, 4)  # (B, colour, kind, M, H, W)
    ours = torch.cat([params[:, :m], per_channel[:, :, 0].flatten(1, 2),
                      per_channel[:, :, 1].flatten(1, 2), per_channel[:, :, 2].flatten(1, 2)], 1)
    a = DiscretizedLogisticMixture(params, 3, m, layout="vdvae")
    b = DiscretizedLogisticMixture(ours, 3, m)
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.allclose(a.log_prob(x), b.log_prob(x)) and torch.allclose(a.mean, b.mean)


def test_five_bit_likelihood_is_a_pmf_over_32_levels():
    params = torch.randn(1, 30, 1, 1, generator=torch.Generator().manual_seed(2))
    params[:, 3:].mul_(0.5)
    levels = torch.arange(32, dtype=torch.uint8) * 8
    grid = torch.cartesian_prod(levels, levels, levels).reshape(-1, 3, 1, 1)
    dist = DiscretizedLogisticMixture(params.expand(len(grid), -1, -1, -1), 3, 3,
                                      layout="vdvae", n_bits=5)
    assert abs(float(torch.logsumexp(dist.log_prob(grid), 0))) < 1e-9
    assert torch.equal(dist.log_prob(grid), dist.log_prob(grid + 7))  # one level: 8 values
    assert (dist.sample(torch.Generator().manual_seed(0)) % 8 == 0).all()
    with pytest.raises(ValueError, match="discretized"):
        dist.log_prob(grid, kind="dequantized")


def test_ffhq256_dataset_means_five_bits(reference):
    values = json.loads(HPARAMS.read_text()) | dict(dataset="ffhq_256")
    probe = open_vdvae(FIXTURE / "latest-model-ema.th", hparams=values, device="cpu")
    assert probe.n_bits == 5
    x = torch.from_numpy(reference["images"])
    log_p = probe.decode(probe.encode(x, posterior="mean")).log_prob(x)
    assert torch.isfinite(log_p).all()
    iw = vp.iwae(probe, x, k=2, progress=False)
    assert iw.attrs["n_bits"] == 5 and np.isfinite(iw["bpd"]).all()


def test_hparams_from_the_log_next_to_the_checkpoint(tmp_path):
    shutil.copy(FIXTURE / "latest-model-ema.th", tmp_path / "latest-model-ema.th")
    with pytest.raises(ValueError, match="pass hparams="):
        open_vdvae(tmp_path)
    hparams = json.loads(HPARAMS.read_text()) | dict(lr=2e-4, desc="tiny")  # training keys
    lines = [json.dumps(dict(time="t", type="hparam", key=k, value=v)) for k, v in
             hparams.items()] + [json.dumps(dict(time="t", message="training model"))]
    (tmp_path / "latest-log.jsonl").write_text("\n".join(lines) + "\n")
    probe = open_vdvae(tmp_path, device="cpu")
    assert probe.layers[-1].resolution == (8, 8)
    assert "latest-log.jsonl" in json.loads(probe.source["files_sha256"])
    assert probe.source["hparams"] == "latest-log.jsonl"


def test_folder_without_ema_file_opens_the_trained_weights(tmp_path):
    shutil.copy(FIXTURE / "latest-model.th", tmp_path / "latest-model.th")
    probe = open_vdvae(tmp_path, hparams=str(HPARAMS), device="cpu")
    assert probe.source["ema"] == 0
    with pytest.raises(CheckpointError, match="model-ema.th"):
        open_vdvae(tmp_path, hparams=str(HPARAMS), ema=True)


def test_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="cifar10"):  # a set that does not fit the file
        open_vdvae(FIXTURE / "latest-model-ema.th", hparams="cifar10", device="cpu")
    with pytest.raises(ValueError, match="unknown VDVAE hparams"):
        open_vdvae(FIXTURE / "latest-model-ema.th", hparams=dict(widht=3), device="cpu")
    with pytest.raises(ValueError, match="ema=False"):
        open_vdvae(FIXTURE / "latest-model-ema.th", hparams=str(HPARAMS), ema=False)
    with pytest.raises(ValueError, match="hparams must be one of"):
        open_vdvae(FIXTURE, hparams="cifar100")
    assert sniff(FIXTURE) and sniff(FIXTURE / "latest-model.th") and not sniff(HPARAMS)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["latest-model.th", "latest-model-ema.th"])
def test_malicious_pickle_is_refused_without_running(tmp_path, name):
    marker = tmp_path / "pwned"
    torch.save({"decoder.gain": _Payload(marker)}, tmp_path / name)
    with pytest.raises(CheckpointError, match=name) as error:
        open_vdvae(tmp_path, hparams=str(HPARAMS), ema=name.endswith("ema.th"))
    assert "refused" in str(error.value)
    assert not marker.exists()


def test_rate_and_iwae_run_through_the_registered_format(probe, reference):
    assert isinstance(probe, VDVAEProbe) and "vdvae" in formats.names()
    x = torch.from_numpy(reference["images"])
    ds = vp.rate(probe, x, batch_size=2, progress=False)
    assert ds.sizes["layer"] == 6 and list(ds["name"].values)[0] == "z00_r1"
    assert np.isfinite(ds["total_rate"]) and float(ds["total_rate"]) > 0
    assert ds.attrs["format"] == "vdvae"
    iw = vp.iwae(probe, x, k=4, batch_size=2, progress=False)
    assert iw.sizes["image"] == 3 and np.isfinite(iw["bpd"]).all() and iw.attrs["n_bits"] == 8
    # the bound on log p(x) is at least the mean single-sample ELBO, in nats
    assert (iw["log_likelihood"] >= iw["elbo"] - 1e-9).all()
    # K = 1 ELBO/dim is near VDVAE's ELBO/dim on these images (other noise draws)
    assert abs(float(iw["elbo_bpd_mean"]) * math.log(2)
               - reference["elbo_per_dim"].mean()) < 0.5
