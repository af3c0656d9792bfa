import json

import numpy as np
import pytest
import torch

import vaeprobe as vp
from vaeprobe.random import image_streams
from vaeprobe.sampling import KINDS


@pytest.fixture(scope="module")
def probe(tiny_run):
    return vp.load(tiny_run, device="cpu")


def quantise(mean: torch.Tensor) -> np.ndarray:
    return (mean.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def draw(probe, n, kind, data=None, **options):
    data = data if kind.startswith("reconstruction") else None
    return vp.samples(probe, n, kind=kind, data=data, progress=False, **options)


def test_samples_dims_dtype_coords_and_provenance(probe):
    ds = draw(probe, 9, "stochastic", temperature=0.7, seed=3, batch_size=4)
    assert dict(ds.sizes) == {"image": 9, "channel": 1, "y": 8, "x": 8}
    assert ds["images"].dims == ("image", "channel", "y", "x")
    assert ds["images"].dtype == np.uint8 and ds["images"].attrs["units"]
    assert all(dim in ds.coords for dim in ds.dims)
    np.testing.assert_array_equal(ds["image"], np.arange(9))
    attrs = ds.attrs
    assert attrs["analysis"] == "samples" and attrs["kind"] == "stochastic"
    assert json.loads(attrs["temperature"]) == 0.7 and attrs["seed"] == 3
    assert attrs["n_images"] == 9 and attrs["dataset"] == "none"
    assert attrs["checkpoint"].endswith(".pt") and len(attrs["checkpoint_sha256"]) == 64
    assert json.loads(attrs["parameters"])["kind"] == "stochastic"
    assert "vaeprobe_version" in attrs and "created_at" in attrs


@pytest.mark.parametrize("kind", KINDS)
def test_samples_do_not_depend_on_batch_size(probe, digits_test, kind):
    one, seven = (draw(probe, 9, kind, digits_test, seed=1, batch_size=b) for b in (1, 7))
    np.testing.assert_array_equal(one["images"].values, seven["images"].values)
    other_seed = draw(probe, 9, kind, digits_test, seed=2, batch_size=7)
    assert not np.array_equal(one["images"].values, other_seed["images"].values)


def test_mean_and_stochastic_kinds_decode_the_prior_latents(probe):
    n, seed, temperature = 6, 4, 0.8
    latents = probe.sample_prior(n, temperature=temperature,
                                 generator=image_streams(seed, range(n)))
    likelihood = probe.decode(latents)
    mean = draw(probe, n, "mean", seed=seed, temperature=temperature, batch_size=4)
    np.testing.assert_array_equal(mean["images"].values, quantise(likelihood.mean))
    stochastic = draw(probe, n, "stochastic", seed=seed, temperature=temperature)
    expected = likelihood.sample(image_streams(seed + 1, range(n))).numpy()
    np.testing.assert_array_equal(stochastic["images"].values, expected)


def test_reconstructions_of_a_seeded_subset(probe, digits_test):
    n, seed = 5, 2
    ds = draw(probe, n, "reconstruction_mean", digits_test, seed=seed)
    chosen = vp.data.select(digits_test, n, seed)
    np.testing.assert_array_equal(ds["source_index"], chosen.numpy())
    x = digits_test.images[chosen]
    expected = probe.decode(probe.encode(x, 1, image_streams(seed, range(n)))).mean
    np.testing.assert_array_equal(ds["images"].values, quantise(expected))
    assert ds.attrs["dataset"] == "digits8:test" and ds.attrs["kind"] == "reconstruction_mean"
    # more samples than inputs: the inputs are cycled
    tiny = digits_test.images[:3]
    cycled = vp.samples(probe, 7, kind="reconstruction_mean", data=tiny, progress=False)
    np.testing.assert_array_equal(cycled["source_index"], [0, 1, 2, 0, 1, 2, 0])


def test_sample_quality_draws_through_samples(probe, digits_test, monkeypatch, tmp_path):
    monkeypatch.setenv("VAEPROBE_CACHE", str(tmp_path))
    ds = vp.sample_quality(probe, digits_test, n_images=8, metrics=["kid"], n_preview=8,
                           feature_extractor="pixels-TEST-ONLY", progress=False)
    for kind in KINDS:
        alone = draw(probe, 8, kind, digits_test)
        np.testing.assert_array_equal(ds["preview"].sel(kind=kind).values, alone["images"])


def test_samples_refusals_name_the_fix(probe, digits_test):
    with pytest.raises(ValueError, match="unknown kind"):
        vp.samples(probe, 4, kind="median")
    with pytest.raises(ValueError, match="pass data="):
        vp.samples(probe, 4, kind="reconstruction_mean")
    with pytest.raises(ValueError, match="only by reconstruction kinds"):
        vp.samples(probe, 4, kind="mean", data=digits_test)
    with pytest.raises(ValueError, match="n_images must be"):
        vp.samples(probe, 0)


def test_the_old_name_n_still_works_and_warns(probe):
    with pytest.warns(DeprecationWarning, match=r"samples\(n=...\) is now n_images="):
        old = vp.samples(probe, n=3, seed=1, progress=False)
    new = vp.samples(probe, n_images=3, seed=1, progress=False)
    np.testing.assert_array_equal(old["images"].values, new["images"].values)
    with pytest.raises(TypeError, match="got both n_images= and its old name n="):
        vp.samples(probe, n=3, n_images=3)
    with pytest.warns(DeprecationWarning, match=r"sample_quality\(n=...\)"), \
            pytest.raises(ValueError, match="n_images must be an integer >= 2"):
        vp.sample_quality(probe, "digits8:test", n=1)


@pytest.mark.parametrize("kind, expected", [
    ("mean", dict(prior=True, likelihood=False)),
    ("stochastic", dict(prior=True, likelihood=True)),
    ("reconstruction_stochastic", dict(prior=False, likelihood=True)),
    ("reconstruction_mean", None),
])
def test_samples_ask_the_probe_what_they_need(tiny_run, digits_test, monkeypatch, kind,
                                              expected):
    probe, calls = vp.load(tiny_run, device="cpu"), []

    def require(analysis, *, likelihood=False, prior=False):
        calls.append((analysis, dict(prior=prior, likelihood=likelihood)))
        raise ValueError(f"{analysis} is undefined for this model")

    monkeypatch.setattr(probe, "require", require, raising=False)
    if expected is None:
        draw(probe, 2, kind, digits_test)
        assert calls == []
    else:
        with pytest.raises(ValueError, match="undefined"):
            draw(probe, 2, kind, digits_test)
        assert calls == [("vp.samples", expected)]


def test_samples_refuse_a_prior_that_is_not_generative(tiny_run, digits_test):
    probe = vp.load(tiny_run, device="cpu")
    probe.prior_is_generative = False  # e.g. a latent-diffusion autoencoder
    with pytest.raises(vp.UndefinedAnalysisError, match="vp.samples is undefined"):
        vp.samples(probe, 2, kind="mean", progress=False)
    assert draw(probe, 2, "reconstruction_mean", digits_test).sizes["image"] == 2
