"""vp.as_probe: every public noun takes a Probe, a run directory, a checkpoint file or a
third-party folder, and gives the same numbers for each."""

import numpy as np
import pytest
import torch

import vaeprobe as vp


@pytest.fixture(scope="module")
def images(digits_test):
    return torch.stack([digits_test[i] for i in range(6)])


def _sources(run):
    probe = vp.load(run)
    latest = vp.checkpoints(run)[-1][1]
    return {"probe": probe, "run": run, "run_str": str(run), "checkpoint": latest}


def test_as_probe_resolves_each_kind_of_source(tiny_run):
    probe = vp.as_probe(tiny_run)
    assert probe.source["checkpoint"] == str(vp.checkpoints(tiny_run)[-1][1])
    assert vp.as_probe(probe) is probe
    assert vp.as_probe(str(tiny_run)).source["checkpoint_sha256"] == \
        probe.source["checkpoint_sha256"]


def test_as_probe_refuses_what_is_not_a_model(tiny_run, tmp_path):
    with pytest.raises(TypeError, match="must be a vp.Probe"):
        vp.as_probe(3.5)
    with pytest.raises(TypeError, match="already a Probe"):
        vp.as_probe(vp.load(tiny_run), format="vaeprobe")
    with pytest.raises(FileNotFoundError, match="not found"):
        vp.as_probe(tmp_path / "missing")


@pytest.mark.parametrize("noun", ["rate", "iwae", "samples", "sample_quality"])
def test_every_noun_takes_every_source(noun, tiny_run, images):
    call = {
        "rate": lambda s: vp.rate(s, images, progress=False).rate.values,
        "iwae": lambda s: vp.iwae(s, images, k=4, progress=False).log_px.values,
        "samples": lambda s: vp.samples(s, 3, progress=False).images.values,
        "sample_quality": lambda s: vp.sample_quality(
            s, images, n=4, kinds=("mean",), metrics=("lpips",), lpips_trunk="random-TEST-ONLY",
            progress=False).lpips_diversity.values,
    }[noun]
    results = {name: call(source) for name, source in _sources(tiny_run).items()}
    reference = results.pop("probe")
    for name, value in results.items():
        np.testing.assert_array_equal(value, reference, err_msg=f"{noun} from a {name}")


def test_spectrum_and_audit_take_a_probe_and_a_checkpoint(tiny_run, images):
    latest = vp.checkpoints(tiny_run)[-1][1]
    a = vp.spectrum(vp.load(latest), images, n_images=6, progress=False)
    b = vp.spectrum(latest, images, n_images=6, progress=False)
    np.testing.assert_array_equal(a.power_reconstruction.values, b.power_reconstruction.values)
    report = vp.audit(latest, images, n_images=6, sections=["bits"], progress=False)
    reference = vp.audit(vp.load(tiny_run), images, n_images=6, sections=["bits"],
                         progress=False)
    np.testing.assert_array_equal(report["bits"].rate.values, reference["bits"].rate.values)


def test_pca_baseline_of_a_run_is_its_training_data(tiny_run):
    from_run = vp.pca_baseline(tiny_run, n_images=50, progress=False)
    direct = vp.pca_baseline("digits8:train", n_images=50, progress=False)
    np.testing.assert_allclose(from_run.eigenvalues.values, direct.eigenvalues.values)
    assert from_run.attrs["dataset"] == direct.attrs["dataset"]


def test_pca_baseline_of_a_model_without_recorded_data_asks_for_images(tiny_run, tmp_path):
    import shutil

    lonely = tmp_path / "ckpt_step00000040.pt"
    shutil.copy(vp.checkpoints(tiny_run)[-1][1], lonely)
    with pytest.raises(ValueError, match="pass data"):
        vp.pca_baseline(lonely, progress=False)
