"""Resolve at the edge, compute in a public core: every noun resolves its model, its images
and its subset once (:func:`vaeprobe._analysis.resolve`), then calls a public core on the
resolved :class:`~vaeprobe._analysis.Evaluation`; the core called on its own gives the very
Dataset the noun gives."""

import numpy as np
import pytest
import torch
import xarray as xr

import vaeprobe as vp
from vaeprobe import _analysis
from vaeprobe._analysis import Evaluation, resolve


@pytest.fixture(scope="module")
def images(digits_test):
    return torch.stack([digits_test[i] for i in range(12)])


def _same(noun: xr.Dataset, core: xr.Dataset) -> None:
    """Identical values, coordinates and attrs, but for the creation time."""
    for ds in (noun, core):
        ds.attrs.pop("created_at")
    xr.testing.assert_identical(noun, core)


def _nouns(run, images):
    """(noun call, the same through the core on an Evaluation resolved by hand) per noun."""
    from vaeprobe.compress import compress, compress_images
    from vaeprobe.fidelity.quality import compute_sample_quality
    from vaeprobe.information import compute_information, information
    from vaeprobe.likelihood import compute_iwae
    from vaeprobe.rate import compute_rate, rate
    from vaeprobe.sampling import compute_samples, samples

    quality = dict(kinds=("mean", "reconstruction_stochastic"), metrics=("lpips",),
                   lpips_trunk="random-TEST-ONLY", progress=False)

    def evaluation(n_images, seed, **options):
        return resolve(run, images, n_images=n_images, seed=seed, **options)

    return {
        "rate": (lambda: rate(run, images, n_images=8, seed=3, per_image=True,
                              posterior="mean", progress=False),
                 lambda: compute_rate(evaluation(8, 3), per_image=True, posterior="mean",
                                      progress=False)),
        "iwae": (lambda: vp.iwae(run, images, k=6, n_images=5, seed=2, progress=False),
                 lambda: compute_iwae(evaluation(5, 2), k=6, progress=False)),
        "information": (lambda: information(run, images, n_images=10, seed=1, progress=False),
                        lambda: compute_information(evaluation(10, 1), progress=False)),
        "samples": (lambda: samples(run, 5, kind="reconstruction_stochastic", data=images,
                                    seed=2, progress=False),
                    lambda: compute_samples(
                        vp.load(run), 5, kind="reconstruction_stochastic", seed=2,
                        images=_analysis.evaluation_of(vp.load(run), images, 5, 2, cycle=True),
                        progress=False)),
        "compress": (lambda: compress(run, images, n_images=3, seed=4, progress=False),
                     lambda: compress_images(evaluation(3, 4, device="cpu"), progress=False)),
        "sample_quality": (lambda: vp.sample_quality(run, images, n_images=4, **quality),
                           lambda: compute_sample_quality(evaluation(4, 0), **quality)),
    }


@pytest.mark.parametrize("noun", ["rate", "iwae", "information", "samples", "compress",
                                  "sample_quality"])
def test_a_core_on_a_resolved_evaluation_gives_the_nouns_dataset(noun, tiny_run, images):
    if noun == "compress":
        pytest.importorskip("constriction")
    through_noun, through_core = _nouns(tiny_run, images)[noun]
    noun_ds, core_ds = through_noun(), through_core()
    for name in ("encode_images_per_second", "decode_images_per_second"):  # timings
        for ds in (noun_ds, core_ds):
            ds.attrs.pop("threads", None)
            if name in ds:
                ds[name] = ds[name] * 0
    _same(noun_ds, core_ds)


def test_spectrum_core_gives_the_row_of_the_noun(tiny_run, images):
    from vaeprobe.spectrum import assemble_spectra, checkpoint_spectra

    latest = vp.checkpoints(tiny_run)[-1][1]
    ds = vp.spectrum(latest, images, n_images=9, seed=5, progress=False)
    evaluation = resolve(latest, images, n_images=9, seed=5)
    row = checkpoint_spectra(evaluation.probe, evaluation.dataset, evaluation.indices, seed=5)
    row.update(step=int(evaluation.probe.source.get("step", 0)),
               source=dict(evaluation.probe.source))
    xr.testing.assert_identical(ds.drop_attrs(), assemble_spectra([row], 0.25).drop_attrs())


def test_pca_core_gives_the_nouns_dataset():
    from vaeprobe.pca import compute_pca, pca_baseline

    noun = pca_baseline("digits8:test", n_images=60, spectrum_distortion=4.0, seed=2,
                        progress=False)
    dataset = vp.data.as_dataset("digits8:test")
    core = compute_pca(dataset, vp.data.select(dataset, 60, seed=2), n_images=60,
                       spectrum_distortion=4.0, seed=2, progress=False)
    _same(noun, core)


@pytest.fixture
def counted(resolutions):
    """Counts of vaeprobe.as_probe (the model) and fit_probe (the images) calls."""
    return resolutions


@pytest.mark.parametrize("noun", ["rate", "iwae", "information", "samples", "spectrum",
                                  "compress", "sample_quality"])
def test_every_noun_resolves_its_source_and_images_once(noun, tiny_run, images, counted):
    if noun == "compress":
        pytest.importorskip("constriction")
    latest = str(vp.checkpoints(tiny_run)[-1][1])
    call = {
        "rate": lambda: vp.rate(tiny_run, images, n_images=4, progress=False),
        "iwae": lambda: vp.iwae(tiny_run, images, k=2, n_images=4, progress=False),
        "information": lambda: vp.information(tiny_run, images, n_images=4, progress=False),
        "samples": lambda: vp.samples(tiny_run, 3, kind="reconstruction_mean", data=images,
                                      progress=False),
        "spectrum": lambda: vp.spectrum(latest, images, n_images=4, progress=False),
        "compress": lambda: vp.compress(tiny_run, images, n_images=2, progress=False),
        "sample_quality": lambda: vp.sample_quality(
            tiny_run, images, n_images=4, kinds=("mean",), metrics=("lpips",),
            lpips_trunk="random-TEST-ONLY", progress=False),
    }[noun]
    call()
    assert counted == {"as_probe": 1, "fit_probe": 1}, f"vp.{noun}: {counted}"


def test_the_counter_sees_a_second_resolution(tiny_run, images, counted):
    """The count above can fail: resolving twice is counted twice."""
    resolve(tiny_run, images, n_images=2, seed=0)
    resolve(tiny_run, images, n_images=2, seed=0)
    assert counted == {"as_probe": 2, "fit_probe": 2}


def test_resolve_checks_the_model_before_reading_any_image(tiny_run):
    """A noun's refusal comes before its data is read (here: data that cannot be read)."""
    def refuse(probe):
        raise vp.probe.UndefinedAnalysisError(f"nothing for {probe.name}")

    with pytest.raises(vp.probe.UndefinedAnalysisError, match="nothing for"):
        resolve(tiny_run, "no-such-dataset:test", n_images=2, seed=0, check=refuse)
    evaluation = resolve(tiny_run, "digits8:test", n_images=3, seed=7)
    assert isinstance(evaluation, Evaluation)
    assert (evaluation.n_images, evaluation.seed, len(evaluation.indices)) == (3, 7, 3)
    np.testing.assert_array_equal(evaluation.indices,
                                  vp.data.select(evaluation.dataset, 3, seed=7))


def test_tiling_core_gives_the_nouns_dataset_and_the_noun_resolves_once(counted):
    from pathlib import Path

    from vaeprobe.tiling import compute_tiling_error, tiling_error

    folder = Path(__file__).parent / "fixtures" / "diffusers" / "tiny_vae"
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    noun = tiling_error(folder, x, tile_size=16, n_images=2, seed=1)
    assert counted == {"as_probe": 1, "fit_probe": 1}
    evaluation = resolve(vp.load(folder), x, n_images=2, seed=1)
    core = compute_tiling_error(evaluation, tile_size=16)
    assert float(core.max_abs_difference_max) > 0  # it did tile
    _same(noun, core)
