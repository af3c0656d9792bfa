"""vp.compress / vp.decompress: bit-exact round trips, real bits against the ELBO."""

from pathlib import Path

import numpy as np
import pytest
import torch

import vaeprobe as vp
from vaeprobe.compress import CompressedFileError, compress, decompress, read_compressed
from vaeprobe.models.hvae import HVAEConfig
from vaeprobe.models.two_stage import TwoStageVAE, secondary_config

VDVAE = Path(__file__).parent / "fixtures" / "vdvae"
TRAINED = Path(__file__).parent / "fixtures" / "tiny8_trained"
TWO_STAGE = Path(__file__).parent / "fixtures" / "tiny8_two_stage"  # trained on TRAINED


def digits(n=6):
    dataset = vp.data.load("digits8", split="test")
    return torch.stack([dataset[i] for i in range(n)])


def test_round_trip_file_and_bits(tiny_run, digits_test, tmp_path):
    path = tmp_path / "digits.vpbb"
    ds = compress(tiny_run, digits_test, n_images=8, out=path, progress=False)
    assert ds.attrs["round_trip"] == 1 and ds.sizes["image"] == 8
    images = decompress(path, tiny_run, progress=False)
    dataset, indices = vp.data.as_dataset(digits_test), vp.data.select(digits_test, 8, 0)
    assert torch.equal(images, torch.stack([dataset[int(i)] for i in indices]))
    # the coder spends what the quantised PMFs say (ANS: a few bits in all; the stack is whole
    # 32-bit words, so up to ~32 bits over ~3,000: 1.03% on the tiny run of issue 28's trainer)
    assert abs(float(ds.coded_bits.sum() - ds.symbol_bits.sum())) < 64
    assert abs(float(ds.coder_overhead_fraction)) < 0.02
    assert float(ds.file_bits) == float(ds.initial_bits + ds.coded_bits.sum())
    assert path.stat().st_size * 8 > float(ds.file_bits)  # + the header
    # ... and the -ELBO splits into its pixel and latent terms
    np.testing.assert_allclose(ds.elbo_bits, ds.pixel_bits + ds.layer_bits.sum("layer"))
    assert float(ds.elbo_bpd) == pytest.approx(float(ds.elbo_bits.mean()) / 64)
    assert all("units" in ds[v].attrs for v in ds.data_vars)
    assert ds.attrs["model_sha256"] == vp.load(tiny_run).source["checkpoint_sha256"]


def test_coded_length_within_two_percent_of_the_elbo_on_a_trained_chain():
    """Over a chain the stack grows by the -ELBO at the same discretization: within 2% on a
    trained model (tiny-8, 400 steps: tests/fixtures/tiny8_trained), initial bits excluded and
    reported."""
    ds = compress(TRAINED, "digits8:test", n_images=40, verify=False, progress=False)
    assert abs(float(ds.overhead_fraction)) < 0.02
    assert float(ds.coded_bits.sum()) == pytest.approx(float(ds.elbo_bits.sum()), rel=0.02)
    assert float(ds.initial_bits) > 0 and np.isnan(float(ds.decode_images_per_second))


def test_two_stage_codes_below_its_primary_as_its_elbo_says():
    """The two-stage model (a secondary trained 1,000 steps on the fixture primary) spends
    fewer real bits on the same chain than its primary, as its -ELBO promises."""
    primary = compress(TRAINED, "digits8:test", n_images=40, verify=False, progress=False)
    two_stage = compress(TWO_STAGE, "digits8:test", n_images=40, verify=False, progress=False)
    assert float(two_stage.elbo_bpd) < float(primary.elbo_bpd)
    assert float(two_stage.coded_bpd) < float(primary.coded_bpd)
    assert two_stage.sizes["layer"] == 2 * primary.sizes["layer"]


def test_two_stage_and_vdvae_round_trip(tmp_path):
    config = HVAEConfig(image_channels=1, image_size=8, width=8, bottleneck=4, latent_channels=2,
                        layers=((1, 1), (8, 1)), encoder_blocks=1, likelihood="learned")
    torch.manual_seed(0)
    two_stage = vp.adapters.probe_for(TwoStageVAE(config, secondary_config(config)), "cpu")
    path = tmp_path / "two-stage.vpbb"
    ds = compress(two_stage, digits(4), n_images=None, out=path, progress=False)
    assert ds.attrs["round_trip"] == 1 and ds.sizes["layer"] == 4
    assert torch.equal(decompress(path, two_stage, progress=False), digits(4))
    vdvae = vp.load(VDVAE / "latest-model-ema.th", hparams=str(VDVAE / "hparams.json"),
                    device="cpu")
    rgb = torch.randint(0, 256, (3, 3, 8, 8), generator=torch.Generator().manual_seed(0),
                        dtype=torch.uint8)  # a logistic mixture joint over the channels
    assert compress(vdvae, rgb, n_images=None, progress=False).attrs["round_trip"] == 1


def test_files_are_checked(tiny_run, tmp_path):
    path = tmp_path / "a.vpbb"
    compress(tiny_run, digits(3), n_images=None, out=path, progress=False)
    header, words = read_compressed(path)
    assert header["format_version"] == 2 and words.dtype == np.uint32
    other = vp.adapters.probe_for(vp.load(tiny_run).model.__class__(
        vp.load(tiny_run).model.config), "cpu")
    with pytest.raises(CompressedFileError, match=header["model_sha256"]):
        decompress(path, other, progress=False)
    (tmp_path / "junk.vpbb").write_bytes(b"not ours")
    with pytest.raises(CompressedFileError, match="not a vaeprobe compressed file"):
        decompress(tmp_path / "junk.vpbb", tiny_run)
    with pytest.raises(FileNotFoundError):
        decompress(tmp_path / "missing.vpbb", tiny_run)


def test_refusals():
    from linear_gaussian import LinearGaussianProbe

    with pytest.raises(vp.UndefinedAnalysisError, match="not a PMF"):
        compress(LinearGaussianProbe(), torch.zeros(2, 1, 2, 2, dtype=torch.uint8),
                 n_images=None, progress=False)
    with pytest.raises(ValueError, match="latent_bits"):
        compress(LinearGaussianProbe(), torch.zeros(2, 1, 2, 2, dtype=torch.uint8),
                 latent_bits=0, progress=False)


def test_command_line(tiny_run, tmp_path, capsys):
    from vaeprobe.cli import main

    file, images = tmp_path / "d.vpbb", tmp_path / "d.npz"
    assert main(["compress", str(tiny_run), "--data", "digits8:test", "--n-images", "5",
                 "--file", str(file), "--out", str(tmp_path / "c.nc")]) == 0
    assert "round trip: exact" in capsys.readouterr().out
    # another process decodes it: the PMFs are reproduced bit for bit across processes
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "vaeprobe.cli", "decompress", str(file),
                           "--model", str(tiny_run), "--images", str(images)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    decoded = vp.data.as_dataset(f"npz:{images}")
    indices = vp.data.select(vp.data.as_dataset("digits8:test"), 5, 0)
    assert torch.equal(torch.stack([decoded[i] for i in range(5)]),
                       torch.stack([vp.data.as_dataset("digits8:test")[int(i)] for i in indices]))
    assert main(["decompress", str(file), "--model", str(tmp_path / "nothing")]) == 2
