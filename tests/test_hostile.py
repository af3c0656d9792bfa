"""A corpus of hostile and careless inputs, each built here, each refused cleanly.

For every case: the documented exit code (2: bad input; 3: a NaN headline; 1: results computed
but not written), a message naming the file or the argument, no traceback, no pickle payload
run, nothing half-written, and bounded memory and time. ``CORPUS`` counts the cases.
"""

import errno
import json
import math
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import vaeprobe as vp
from vaeprobe import cli, io, validate

FIXTURES = Path(__file__).parent / "fixtures"
DIFFUSERS = FIXTURES / "diffusers" / "tiny_vae"
PYTHAE = FIXTURES / "pythae" / "vae"
VDVAE = FIXTURES / "vdvae"
MAX_RSS_GROWTH = 400 * 2 ** 20  # bytes a refused case may add to the process's peak memory
TIME_LIMIT_S = 300  # a refused case that runs this long hangs
CORPUS = []  # (class, case) of every case run: its size is the corpus size


class _Payload:
    """A pickle that would create the marker file if it were ever unpickled."""

    def __reduce__(self):
        return (os.system, (f"touch {os.environ['HOSTILE_MARKER']}",))


@pytest.fixture
def marker(tmp_path, monkeypatch):
    path = tmp_path / "payload-ran"
    monkeypatch.setenv("HOSTILE_MARKER", str(path))
    yield path
    assert not path.exists(), "a pickle payload ran"


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def refused(kind: str, argv: list[str], capsys, *names: str, code: int = 2, main=cli.main,
            absent=("Traceback", "weights_only=False", "`weights_only` set to `False`",
                    "will likely succeed")) -> str:
    """Run a command line in-process; check the exit code, the names in its message, no
    traceback and no advice to unpickle; bounded time and memory. Returns stderr."""
    CORPUS.append((kind, " ".join(argv)))
    capsys.readouterr()
    before = _peak_rss()
    status = _within_time_limit(main, argv)
    grown = _peak_rss() - before
    out, err = capsys.readouterr()
    assert status == code, f"exit {status}, expected {code}: {err}"
    for name in names:
        assert str(name) in err, f"{name!r} not named in: {err}"
    for text in absent:
        assert text not in out + err, f"{text!r} in: {err}"
    assert grown < MAX_RSS_GROWTH, f"the peak memory grew by {grown} bytes"
    return err


def _within_time_limit(main, argv):
    """``main(argv)``, failing the test if it runs past TIME_LIMIT_S (a hang, not a slow
    machine: the limit is generous, and no wall-clock time is asserted)."""
    def hung(signum, frame):
        raise TimeoutError(f"{argv} ran past {TIME_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(TIME_LIMIT_S)
    try:
        return main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _copy(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file():
            (target / file.name).write_bytes(file.read_bytes())
    return target


def _edit_json(path: Path, **changes) -> None:
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values))


def _no_temporaries(folder: Path) -> None:
    left = [p.name for p in folder.iterdir() if p.name.startswith(".") and "tmp" in p.name]
    assert not left, left


# ---- the torch floor and pickles ---------------------------------------------------------------

@pytest.mark.parametrize("version, cves", [("2.5.1", ["CVE-2025-32434", "CVE-2026-24747"]),
                                           ("2.9.0", ["CVE-2026-24747"])])
def test_an_old_torch_refuses_untrusted_files_naming_the_cves(version, cves, tiny_run,
                                                              monkeypatch, capsys):
    monkeypatch.setattr(torch, "__version__", version)
    err = refused("torch floor", ["rate", str(tiny_run), "--data", "digits8:test"], capsys,
                  *cves, "torch>=2.10")
    assert "CVE-2025-32434" in err or version != "2.5.1"
    monkeypatch.setattr(torch, "__version__", "2.10.0")
    validate.require_safe_torch()  # the floor itself is accepted


def test_pyproject_requires_the_safe_torch():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"torch>=2.10"' in text and '"torchvision>=0.25"' in text


def test_payload_pickles_never_run_and_never_advise_weights_only_false(tmp_path, marker,
                                                                        capsys):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "vaeprobe-checkpoint", "state_dict": _Payload()},
               run / "ckpt_step00000010.pt")
    refused("pickle", ["rate", str(run), "--data", "digits8:test"], capsys,
            run / "ckpt_step00000010.pt", "posix.system")
    pythae = _copy(PYTHAE, tmp_path / "pythae")
    torch.save({"model_state_dict": {"w": _Payload()}}, pythae / "model.pt")
    refused("pickle", ["rate", str(pythae), "--data", "digits8:test"], capsys,
            pythae / "model.pt")
    vdvae = tmp_path / "vdvae"
    vdvae.mkdir()
    torch.save({"w": _Payload()}, vdvae / "x-model-ema.th")
    refused("pickle", ["rate", str(vdvae / "x-model-ema.th"), "--data", "digits8:test",
                       "--option", f"hparams={VDVAE / 'hparams.json'}"], capsys,
            vdvae / "x-model-ema.th")
    # the library's source never suggests it either
    package = Path(vp.__file__).parent
    for path in package.rglob("*.py"):
        assert "weights_only=False" not in path.read_text(), path


# ---- configs that lie: validated and sized before anything is built ----------------------------

def test_configs_asking_for_terabytes_are_refused_before_allocating(tmp_path, capsys):
    diffusers = _copy(DIFFUSERS, tmp_path / "diffusers")
    _edit_json(diffusers / "config.json", block_out_channels=[60000, 60000], norm_num_groups=2)
    refused("allocation", ["rate", str(diffusers), "--data", "digits8:test"], capsys,
            diffusers / "config.json", "block_out_channels", "asks for about", "TiB",
            "nothing was allocated")
    _edit_json(diffusers / "config.json", block_out_channels=[1000000, 1000000])
    refused("allocation", ["rate", str(diffusers), "--data", "digits8:test"], capsys,
            diffusers / "config.json", "block_out_channels", "[1, 65536]")
    pythae = _copy(PYTHAE, tmp_path / "pythae")
    _edit_json(pythae / "model_config.json", input_dim=[3, 100000, 100000])
    refused("allocation", ["rate", str(pythae), "--data", "digits8:test"], capsys,
            pythae / "model_config.json", "input_dim")
    hparams = json.loads((VDVAE / "hparams.json").read_text())
    (tmp_path / "wide.json").write_text(json.dumps({**hparams, "width": 60000,
                                                    "custom_width_str": "1:60000"}))
    refused("allocation", ["rate", str(VDVAE / "latest-model-ema.th"), "--data", "digits8:test",
                           "--option", f"hparams={tmp_path / 'wide.json'}"], capsys,
            tmp_path / "wide.json", "width=60000")


def test_the_memory_limit_is_an_option_and_an_environment_variable(tiny_run, monkeypatch,
                                                                    capsys):
    refused("allocation", ["rate", str(tiny_run), "--data", "digits8:test", "--max-memory",
                           "1KB"], capsys, "ckpt_step", "max_memory")
    monkeypatch.setenv(validate.MEMORY_ENV, "1KB")
    with pytest.raises(validate.BudgetError, match=r"\$VAEPROBE_MAX_MEMORY"):
        vp.load(tiny_run)
    assert vp.load(tiny_run, max_memory="1GB").layers  # the option wins over the variable


def _research_folder(folder: Path, specs: dict) -> Path:
    """A disentangling-vae / JointVAE folder: specs.json and a model.pt never read (the specs
    are refused before it is)."""
    folder.mkdir()
    (folder / "specs.json").write_text(json.dumps(specs))
    (folder / "model.pt").write_bytes(b"not read")
    return folder


def test_research_formats_are_sized_before_allocating(tmp_path, capsys):
    burgess = dict(model_type="Burgess", img_size=[1, 32, 32], rec_dist="bernoulli")
    cases = [("disvae", dict(burgess, latent_dim=1_500_000), ["--max-memory", "1GB"],
              ["latent_dim", "asks for about", "GiB", "nothing was allocated"]),
             ("disvae", dict(burgess, latent_dim=1e9), [], ["latent_dim", "nothing was allocated"]),
             ("disvae", dict(burgess, latent_dim=1e12), [], ["latent_dim", "must be an integer"]),
             ("disvae", dict(burgess, latent_dim=2.5), [], ["latent_dim", "must be an integer"]),
             ("disvae", dict(burgess, img_size="big"), [], ["img_size"]),
             ("jointvae", dict(dataset="mnist", latent_spec=dict(cont=10 ** 9, disc=[10])), [],
              ["latent_spec", "nothing was allocated"]),
             ("jointvae", dict(dataset="mnist", latent_spec=dict(cont=10, disc=[10 ** 9])), [],
              ["latent_spec", "nothing was allocated"]),
             ("jointvae", dict(dataset="mnist", latent_spec=dict(cont=10, disc=["ten"])), [],
              ["latent_spec.disc", "must be an integer"]),
             ("jointvae", dict(dataset="mnist", latent_spec=[10, 10]), [],
              ["latent_spec must be an object"])]
    for index, (kind, specs, flags, words) in enumerate(cases):
        folder = _research_folder(tmp_path / f"{kind}{index}", specs)
        refused("allocation", ["rate", str(folder), "--data", "digits8:test", *flags], capsys,
                folder / "specs.json", *words)


@pytest.mark.parametrize("change, names", [
    (dict(latent_channels=-3), ["latent_channels", "-3"]),
    (dict(norm_num_groups=0), ["norm_num_groups", "0"]),
    (dict(block_out_channels=[]), ["block_out_channels"]),
    (dict(block_out_channels=[4, 8, 16]), ["down_block_types", "match"]),
    (dict(norm_num_groups=3), ["norm_num_groups 3 must divide"]),
    (dict(scaling_factor="big"), ["scaling_factor"]),
    (dict(layers_per_block=True), ["layers_per_block"]),
])
def test_diffusers_configs_with_bad_values(change, names, tmp_path, capsys):
    folder = _copy(DIFFUSERS, tmp_path / "vae")
    _edit_json(folder / "config.json", **change)
    refused("bad config", ["rate", str(folder), "--data", "digits8:test"], capsys,
            folder / "config.json", *names)


def test_a_json_list_where_an_object_belongs(tmp_path, capsys):
    folder = _copy(DIFFUSERS, tmp_path / "vae")
    (folder / "config.json").write_text('[{"_class_name": "AutoencoderKL"}]')
    refused("bad config", ["rate", str(folder), "--data", "digits8:test", "--format",
                           "diffusers"], capsys, folder / "config.json", "JSON object")
    pythae = _copy(PYTHAE, tmp_path / "pythae")
    (pythae / "model_config.json").write_text("[1, 2, 3]")
    refused("bad config", ["rate", str(pythae), "--data", "digits8:test"], capsys,
            pythae / "model_config.json", "JSON object")
    (tmp_path / "hparams.json").write_text('["width", 16]')
    refused("bad config", ["rate", str(VDVAE / "latest-model-ema.th"), "--data",
                           "digits8:test", "--option", f"hparams={tmp_path / 'hparams.json'}"],
            capsys, tmp_path / "hparams.json", "JSON object")


def test_a_native_checkpoint_whose_stored_config_lies(tiny_run, tmp_path, capsys):
    payload = io.read_checkpoint(vp.checkpoints(tiny_run)[-1][1])
    for change, names in ((dict(latent_channels=-3), ["latent_channels", "-3"]),
                          (dict(width=1 << 16, image_size=8192,
                                layers=[[1, 1], [8192, 1]]), ["asks for about"]),
                          (dict(layers="many"), ["layers"])):
        path = tmp_path / f"ckpt_step{len(CORPUS):08d}.pt"
        io.save_checkpoint(path, family="hvae", config={**payload["config"], **change},
                           state_dict=payload["state_dict"], step=1)
        refused("bad config", ["rate", str(path), "--data", "digits8:test"], capsys, path,
                *names)


def test_weights_whose_shapes_contradict_their_config(tmp_path, capsys):
    folder = _copy(DIFFUSERS, tmp_path / "vae")
    _edit_json(folder / "config.json", latent_channels=3)
    refused("bad config", ["rate", str(folder), "--data", "digits8:test"], capsys,
            "diffusion_pytorch_model.safetensors", "shape mismatch")


# ---- files that are not what their names say ---------------------------------------------------

def test_a_text_file_named_like_weights(tmp_path, capsys):
    pythae = _copy(PYTHAE, tmp_path / "pythae")
    (pythae / "model.pt").write_text("encoder.weight = [1, 2, 3]\n")
    refused("not weights", ["rate", str(pythae), "--data", "digits8:test"], capsys,
            pythae / "model.pt", "not a checkpoint")
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt_step00000010.pt").write_text("state_dict: weights\n")
    refused("not weights", ["rate", str(run), "--data", "digits8:test"], capsys,
            run / "ckpt_step00000010.pt")


def test_truncated_and_corrupt_weights(tiny_run, tmp_path, capsys):
    data = vp.checkpoints(tiny_run)[-1][1].read_bytes()
    (tmp_path / "ckpt_step00000001.pt").write_bytes(data[: len(data) // 2])
    refused("corrupt", ["rate", str(tmp_path / "ckpt_step00000001.pt"), "--data",
                        "digits8:test"], capsys, "ckpt_step00000001.pt", "truncated")
    folder = _copy(DIFFUSERS, tmp_path / "vae")
    weights = folder / "diffusion_pytorch_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[8:40] = b"{ this is not a header ........."
    weights.write_bytes(bytes(raw))
    refused("corrupt", ["rate", str(folder), "--data", "digits8:test"], capsys, weights)
    raw[:8] = struct.pack("<Q", 1 << 60)  # a header length far past the file
    weights.write_bytes(bytes(raw))
    refused("corrupt", ["rate", str(folder), "--data", "digits8:test"], capsys, weights)


def test_integer_weights_where_floats_belong(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = _copy(DIFFUSERS, tmp_path / "vae")
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["encoder.conv_in.weight"] = (state["encoder.conv_in.weight"] * 100).to(torch.int64)
    save_file(state, str(weights))
    refused("dtype", ["rate", str(folder), "--data", "digits8:test"], capsys, weights,
            "encoder.conv_in.weight", "int64")


def test_nonfinite_weights_are_refused_unless_allowed_and_then_flagged(tiny_run, tmp_path,
                                                                         capsys):
    payload = io.read_checkpoint(vp.checkpoints(tiny_run)[-1][1])
    state = {k: v.clone() for k, v in payload["ema_state_dict"].items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 4)
    state[name].view(-1)[:3] = float("nan")
    path = tmp_path / "ckpt_step00000040.pt"
    io.save_checkpoint(path, family=payload["family"], config=payload["config"],
                       state_dict=state, ema_state_dict=state, step=40)
    refused("nonfinite", ["rate", str(path), "--data", "digits8:test"], capsys, path, name,
            "3 non-finite", "--allow-nonfinite")
    err = refused("nonfinite", ["rate", str(path), "--data", "digits8:test", "--n-images",
                                "8", "--allow-nonfinite", "--out", str(tmp_path / "r.nc")],
                  capsys, "total_rate", "not a number", code=3)
    assert "warning" in err
    result = vp.open_results(tmp_path / "r.nc")
    assert "total_rate" in json.loads(result.attrs["nonfinite"])
    assert "NaN" in result.attrs["warning"] and result.attrs["allow_nonfinite"] == 1
    # the same exit status from every command that reports a number of this model
    for command, extra in (("information", []), ("compress", ["--no-verify"])):
        err = refused("nonfinite", [command, str(path), "--data", "digits8:test",
                                    "--n-images", "4", "--allow-nonfinite", *extra], capsys,
                      "not a number", code=3)
        assert "WARNING" in capsys.readouterr().out + err or "warning" in err


# ---- data files --------------------------------------------------------------------------------

def _png(path: Path, width: int, height: int, bit_depth: int, colour: int, rows: bytes) -> None:
    """A PNG written byte by byte (Pillow cannot write 16-bit colour, nor lie about a size)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    levels = np.array([[0, 257, 32896, 65535]] * 4, dtype=np.uint16)  # 0, 1, 128, 255 x 257
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(levels).save(grey / "a.png")
    images = vp.data.load(f"folder:{grey}", size=4).images
    assert images[0, 0, 0].tolist() == [0, 1, 128, 255]  # was [0, 255, 255, 255]
    colour = tmp_path / "colour"
    colour.mkdir()
    row = b"\x00" + b"".join(struct.pack(">HHH", v, v, v) for v in levels[0])
    _png(colour / "b.png", 4, 4, 16, 2, row * 4)
    images = vp.data.load(f"folder:{colour}", size=4).images
    assert images[0, :, 0].tolist() == [[0, 1, 128, 255]] * 3
    CORPUS.extend([("images", "16-bit grey PNG"), ("images", "16-bit RGB PNG")])


def test_float_images_decompression_bombs_and_text_named_png(tmp_path, monkeypatch, capsys):
    from PIL import Image

    bomb = tmp_path / "bomb"
    bomb.mkdir()
    _png(bomb / "huge.png", 200000, 200000, 1, 0, b"")  # 4e10 pixels, a few bytes on disk
    refused("images", ["data", f"folder:{bomb}"], capsys, bomb / "huge.png",
            "200000 x 200000", "VAEPROBE_MAX_IMAGE_PIXELS")
    floats = tmp_path / "floats"
    floats.mkdir()
    Image.fromarray(np.ones((4, 4), np.float32)).save(floats / "f.tif")
    refused("images", ["data", f"folder:{floats}"], capsys, floats / "f.tif", "mode F")
    text = tmp_path / "text"
    text.mkdir()
    (text / "photo.png").write_text("not an image")
    refused("images", ["data", f"folder:{text}"], capsys, text / "photo.png")
    monkeypatch.setenv(validate.IMAGE_PIXELS_ENV, "10")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(text / "photo.png")
    refused("images", ["data", f"folder:{text}"], capsys, "4 x 4 = 16 pixels")


def test_truncated_and_wrong_npz(tmp_path, capsys):
    path = tmp_path / "images.npz"
    np.savez_compressed(path, images=np.zeros((16, 1, 8, 8), np.uint8))
    path.write_bytes(path.read_bytes()[:100])
    refused("npz", ["data", f"npz:{path}"], capsys, path, "truncated")
    np.savez(path, images=np.zeros((4, 1, 8, 8), np.uint16))
    refused("npz", ["data", f"npz:{path}"], capsys, path, "uint16")
    np.savez(path, images=np.array([{"a": 1}], dtype=object))
    refused("npz", ["data", f"npz:{path}"], capsys, path)


# ---- numbers in arguments ----------------------------------------------------------------------

@pytest.mark.parametrize("argv, names", [
    (["quality", "{run}", "--reference", "digits8:test", "-n", "4", "--temperature", "nan",
      "--kinds", "mean", "--metrics", "fid", "--feature-extractor",
      "random-convnet-TEST-ONLY"], ["temperature", "nan"]),
    (["samples", "{run}", "--n-images", "4", "--temperature", "-1"], ["temperature", "-1"]),
    (["rate", "{run}", "--data", "digits8:test", "--n-images", "0"], ["n_images"]),
    (["pca", "digits8:test", "--targets", "1", "nan"], ["targets", "nan"]),
    (["pca", "digits8:test", "--targets", "-1"], ["targets", "-1"]),
    (["pca", "digits8:test", "--distortion", "inf"], ["spectrum_distortion", "inf"]),
])
def test_numeric_arguments(argv, names, tiny_run, capsys):
    refused("arguments", [a.format(run=tiny_run) for a in argv], capsys, *names)


def test_numeric_arguments_in_python(tiny_run, digits_test):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        vp.samples(tiny_run, n_images=2, temperature=float("nan"))
    with pytest.raises(TypeError, match="n_images must be a positive integer"):
        vp.rate(tiny_run, digits_test, n_images=2.5)
    with pytest.raises(ValueError, match="targets"):
        vp.pca_baseline(digits_test, targets=[float("inf")])


# ---- the trainer -------------------------------------------------------------------------------

def _train(argv):
    from trainers.train import main

    return main(argv)


@pytest.mark.parametrize("flag, value", [("--ema-rate", "nan"), ("--ema-rate", "1"),
                                         ("--lr", "inf"), ("--lr", "0"), ("--beta", "-1"),
                                         ("--sigma", "nan"), ("--gamma", "inf"),
                                         ("--max-skip-fraction", "2")])
def test_trainer_float_flags_are_finite_and_in_range(flag, value, tmp_path, capsys):
    out = tmp_path / "run"
    refused("trainer flags", ["--preset", "tiny-8", "--data", "digits8", "--steps", "2",
                              "--out", str(out), flag, value], capsys, flag, value,
            main=_train)
    assert not out.exists()  # refused before the run directory was made


def test_a_trainer_whose_loss_stays_nonfinite_stops_without_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    refused("trainer nonfinite", ["--preset", "tiny-8", "--data", "digits8", "--steps", "30",
                                  "--lr", "1e30", "--no-progress", "--out", str(out)], capsys,
            "non-finite", "10 steps in a row", "--lr", main=_train)
    assert not list(out.glob("ckpt_step*"))  # before: an all-NaN checkpoint and exit 0
    assert not (out / ".lock").exists()


def test_trainer_never_writes_a_nonfinite_checkpoint(tmp_path):
    from trainers.config import make
    from trainers.train import Trainer, TrainingError

    trainer = Trainer(make(preset="tiny-8", data="digits8", steps=2, progress=False,
                           out=str(tmp_path / "run")))
    with torch.no_grad():
        next(trainer.ema.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(TrainingError, match="EMA weights became non-finite"):
        trainer.save()
    assert not list((tmp_path / "run").glob("ckpt_step*")) if (tmp_path / "run").exists() else True
    CORPUS.append(("trainer nonfinite", "inf in the EMA weights at a save"))


def test_an_edited_run_config_is_named_on_resume_and_in_analyses(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path / "run")
    _edit_json(run / "config.json", train={**json.loads((run / "config.json").read_text())[
        "train"], "steps": "many"})
    refused("run config", ["--out", str(run), "--resume"], capsys, "config.json", "steps",
            main=_train)
    (run / "config.json").write_text('["not", "a", "config"]')
    refused("run config", ["--out", str(run), "--resume"], capsys, run / "config.json",
            main=_train)
    refused("run config", ["pca", str(run)], capsys, run / "config.json")
    (run / "config.json").write_text(json.dumps({"train": {"objective": "distortion",
                                                           "gamma": "eight"}}))
    refused("run config", ["spectrum", str(run), "--n-images", "4"], capsys,
            run / "config.json", "gamma")


# ---- coded files (.vpbb): damaged or mismatched files are refused before decoding --------------

def _vpbb_parts(blob: bytes) -> tuple[dict, int]:
    """(header, offset of the payload) of a .vpbb file's bytes."""
    from vaeprobe.compressed_file import MAGIC

    (length,) = struct.unpack("<I", blob[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    return json.loads(blob[start:start + length]), start + length + 4


def _vpbb_with(blob: bytes, crc: bool = True, **changes) -> bytes:
    """The file with header fields changed, its CRC32 recomputed (a deliberate edit) or not."""
    from vaeprobe.compressed_file import MAGIC

    header, payload = _vpbb_parts(blob)
    old_crc = blob[payload - 4:payload]
    text = json.dumps({**header, **changes}, sort_keys=True).encode()
    check = struct.pack("<I", zlib.crc32(text)) if crc else old_crc
    return MAGIC + struct.pack("<I", len(text)) + text + check + blob[payload:]


def test_damaged_and_edited_vpbb_files_are_refused_before_decoding(tiny_run, tmp_path, capsys):
    good, images = tmp_path / "good.vpbb", tmp_path / "images.npz"
    assert cli.main(["compress", str(tiny_run), "--data", "digits8:test", "--n-images", "4",
                     "--file", str(good)]) == 0
    blob = good.read_bytes()
    header, payload = _vpbb_parts(blob)
    flipped = bytearray(blob)
    flipped[payload + 5] ^= 0x10
    raw_count = blob.replace(b'"n_images": 4', b'"n_images": 5')
    raw_precision = blob.replace(b'"precision": 24', b'"precision": 16')
    assert raw_count != blob and raw_precision != blob
    cases = [("header only", blob[:payload], "truncated"),
             ("one word short", blob[:-4], "truncated"), ("half", blob[:len(blob) // 2],
                                                          "truncated"),
             ("bit flip in the payload", bytes(flipped), "payload is damaged"),
             ("image count edited", raw_count, "header is damaged"),
             ("precision edited", raw_precision, "header is damaged"),
             ("1e12 images, CRC fixed", _vpbb_with(blob, n_images=10 ** 12), "n_images"),
             ("latent_bits 0, CRC fixed", _vpbb_with(blob, latent_bits=0), "latent_bits"),
             ("latent_bits 99, CRC fixed", _vpbb_with(blob, latent_bits=99), "latent_bits"),
             ("precision 16, CRC fixed", _vpbb_with(blob, precision=16), "precision"),
             ("3 of 4 images, CRC fixed", _vpbb_with(blob, n_images=3), "digest"),
             ("5 of 4 images, CRC fixed", _vpbb_with(blob, n_images=5), "digest"),
             ("other options, CRC fixed", _vpbb_with(blob, load_options={"ema": False}),
              "other load options"),
             ("version 1", _vpbb_with(blob, format_version=1), "format version 1")]
    for name, content, words in cases:
        damaged = tmp_path / "damaged.vpbb"
        damaged.write_bytes(content)
        refused(f"vpbb: {name}", ["decompress", str(damaged), "--model", str(tiny_run),
                                  "--images", str(images)], capsys, damaged, words)
        assert not images.exists(), name
    # the good file still decodes, bit-exactly, verified against its digest
    assert cli.main(["decompress", str(good), "--model", str(tiny_run), "--images",
                     str(images)]) == 0
    assert "sha256 matches" in capsys.readouterr().out
    from vaeprobe.compressed_file import images_digest

    assert images_digest(np.load(images)["images"]) == header["images_sha256"]


def test_a_bit_flipped_anywhere_in_a_vpbb_is_refused(tiny_run, tmp_path):
    from vaeprobe.compress import CompressedFileError

    good = tmp_path / "good.vpbb"
    vp.compress(tiny_run, "digits8:test", n_images=2, out=good, progress=False)
    blob = good.read_bytes()
    positions = np.random.default_rng(0).choice(len(blob) * 8, size=48, replace=False)
    for bit in positions:
        flipped = bytearray(blob)
        flipped[bit // 8] ^= 1 << (bit % 8)
        damaged = tmp_path / "flipped.vpbb"
        damaged.write_bytes(bytes(flipped))
        with pytest.raises(CompressedFileError):
            vp.decompress(damaged, tiny_run, progress=False)
    CORPUS.append(("vpbb", "48 single bit flips across the file"))


def test_a_vpbb_decodes_only_with_the_load_options_it_was_coded_with(tmp_path):
    from vaeprobe.compress import CompressedFileError

    coded = tmp_path / "p.vpbb"
    sharp = vp.load(PYTHAE, likelihood="gaussian", sigma=0.1, device="cpu")
    images = torch.randint(0, 256, (3, *sharp.image_shape), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    vp.compress(sharp, images, n_images=None, out=coded, progress=False)
    blurred = vp.load(PYTHAE, likelihood="gaussian", sigma=0.3, device="cpu")
    with pytest.raises(CompressedFileError, match="sigma.*0.1.*this model.*0.3"):
        vp.decompress(coded, blurred, progress=False)
    # a path is opened with the file's own options: the images come back exactly
    assert torch.equal(vp.decompress(coded, PYTHAE, progress=False), images)
    CORPUS.append(("vpbb", "decoded with other load options"))


def test_compress_and_decompress_never_replace_inputs_or_unknown_files(tiny_run, tmp_path,
                                                                       capsys):
    run = _copy(tiny_run, tmp_path / "run")
    checkpoint = vp.checkpoints(run)[-1][1]
    digest = io.sha256_file(checkpoint)
    compress = ["compress", str(run), "--data", "digits8:test", "--n-images", "2", "--file"]
    refused("outputs", compress + [str(checkpoint)], capsys, checkpoint, "input")
    refused("outputs", compress + [str(run / "config.json"), "--overwrite"], capsys,
            "config.json")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    refused("outputs", compress + [str(notes)], capsys, notes, "--overwrite")
    coded = tmp_path / "d.vpbb"
    assert cli.main(compress + [str(coded)]) == 0
    assert cli.main(compress + [str(coded)]) == 0  # its own file is replaced
    decompress = ["decompress", str(coded), "--model", str(run), "--images"]
    refused("outputs", decompress + [str(coded)], capsys, coded, "input")
    refused("outputs", decompress + [str(checkpoint), "--overwrite"], capsys, checkpoint)
    refused("outputs", decompress + [str(notes)], capsys, notes, "--overwrite")
    assert notes.read_text() == "mine" and io.sha256_file(checkpoint) == digest
    images = tmp_path / "d.npz"
    assert cli.main(decompress + [str(images)]) == 0
    assert cli.main(decompress + [str(images)]) == 0  # its own .npz is replaced
    assert cli.main(decompress + [str(notes), "--overwrite"]) == 0
    assert vp.data.as_dataset(f"npz:{notes}")[0].dtype == torch.uint8


# ---- the audit store: nothing on disk trusted unchecked ----------------------------------------

AUDIT = dict(n_images=6, sections=["model_card", "bits"], progress=False)


def test_a_foreign_section_is_never_published(tiny_run, tmp_path):
    trained = FIXTURES / "tiny8_trained"
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    truth = vp.audit(tiny_run, "digits8:test", out=ours, **AUDIT)["bits"]
    foreign = vp.audit(trained, "digits8:test", out=theirs, **AUDIT)["bits"]
    assert float(foreign.total_rate) != pytest.approx(float(truth.total_rate))
    # another model's section copied in: recomputed, said, never published
    (ours / "sections" / "bits.nc").write_bytes((theirs / "sections" / "bits.nc").read_bytes())
    with pytest.warns(UserWarning, match="bits.*another model"):
        report = vp.audit(tiny_run, "digits8:test", out=ours, **AUDIT)
    assert json.loads(report.attrs["computed_sections"]) == ["bits"]
    assert float(report["bits"].total_rate) == pytest.approx(float(truth.total_rate))
    # no audit.json at all: a folder of the other model's sections is not taken as ours
    (ours / "audit.json").unlink()
    for file in (theirs / "sections").iterdir():
        (ours / "sections" / file.name).write_bytes(file.read_bytes())
    with pytest.warns(UserWarning, match="another model"):
        report = vp.audit(tiny_run, "digits8:test", out=ours, **AUDIT)
    assert float(report["bits"].total_rate) == pytest.approx(float(truth.total_rate))
    CORPUS.extend([("audit store", "foreign section file"),
                   ("audit store", "foreign sections, no audit.json")])


def test_a_partial_sections_run_adds_to_the_report_and_never_shrinks_it(tiny_run, tmp_path):
    out = tmp_path / "audit"
    vp.audit(tiny_run, "digits8:test", out=out, **AUDIT)
    partial = vp.audit(tiny_run, "digits8:test", out=out, **{**AUDIT, "sections": ["latents"]})
    assert list(partial) == ["model_card", "bits", "latents"]
    assert json.loads(partial.attrs["computed_sections"]) == ["latents"]
    page = (out / "audit.html").read_text()
    assert all(title in page for title in ("Where the bits go", "Latent"))
    CORPUS.append(("audit store", "a partial --sections run"))


def test_audit_directories_that_are_not_audits(tiny_run, tmp_path, capsys, monkeypatch):
    base = ["audit", str(tiny_run), "--data", "digits8:test", "--n-images", "4", "--sections",
            "model_card", "--quiet"]
    plain = tmp_path / "plain"
    plain.mkdir()
    refused("audit store", base + ["--out", str(plain), "--resume"], capsys, plain,
            "no audit to resume")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "audit.html").write_text("<html>my own notes</html>")
    monkeypatch.chdir(mine.parent)  # the default --out is ./audit
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "audit.html").write_text("<html>my own notes</html>")
    refused("audit store", base, capsys, "audit.html", "--overwrite")
    assert (tmp_path / "audit" / "audit.html").read_text() == "<html>my own notes</html>"
    for content in ("[1, 2]", "garbage {"):
        bad = tmp_path / f"bad{len(content)}"
        bad.mkdir()
        (bad / "audit.json").write_text(content)
        refused("audit store", base + ["--out", str(bad)], capsys, bad / "audit.json",
                "not an audit manifest")
    assert cli.main(base + ["--out", str(mine), "--overwrite"]) == 0
    assert "vaeprobe" in (mine / "audit.html").read_text()


# ---- compare: every model checked first, protocols never mixed silently ----------------------

def test_compare_checks_every_model_before_auditing_any(tiny_run, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.pt").write_text("version https://git-lfs.github.com/spec/v1\n")
    out = tmp_path / "cmp"
    base = ["compare", str(tiny_run), "--data", "digits8:test", "--n-images", "4",
            "--no-information", "--out", str(out)]
    refused("compare", base[:2] + [str(DIFFUSERS)] + base[2:], capsys, "tiny_vae",
            "nothing was audited")
    refused("compare", base[:2] + [str(broken)] + base[2:], capsys, "model broken",
            "nothing was audited")
    assert not (out / "models").exists()  # no audit ran before the bad model was found
    notes = tmp_path / "mine"
    notes.mkdir()
    (notes / "compare.html").write_text("my page")
    refused("outputs", base[:-1] + [str(notes)], capsys, "compare.html", "--overwrite")


def test_compare_reuses_only_audits_of_its_protocol_and_says_so(tiny_run, tmp_path):
    import xarray as xr

    from vaeprobe.compare import (
        AUDIT_SECTIONS,
        _audit_protocol,
        _find_audit,
        _mixed_protocols,
        _protocol,
    )

    data = vp.data.as_dataset("digits8:test")
    probe = vp.load(tiny_run)
    here = _protocol(data, 6, 0, "inception-v3-compat", "alexnet")
    run = _copy(tiny_run, tmp_path / "run")
    stored = run / "audit" / "audit.nc"
    stored.parent.mkdir()

    def audit_on_disk(**changes):  # the root attributes compare reads from an audit.nc
        parameters = dict(settings=here["settings"], feature_extractor="inception-v3-compat",
                          lpips_trunk="alexnet")
        attrs = dict(sections=json.dumps(list(AUDIT_SECTIONS)), dataset="digits8:test",
                     checkpoint_sha256=probe.source["checkpoint_sha256"], n_images=6, seed=0,
                     quick=0)
        attrs.update(changes)
        attrs["parameters"] = json.dumps({**parameters, **changes.pop("parameters", {})})
        io.save(xr.Dataset(attrs=attrs), stored, overwrite=True)

    audit_on_disk()
    assert _find_audit(run, probe, data, None, "run", here) == (stored, "")
    for change, said in [(dict(quick=1, n_images=4), "quick 1 (here 0)"),
                         (dict(seed=3), "seed 3 (here 0)"),
                         (dict(parameters={"lpips_trunk": "random-TEST-ONLY"}), "lpips_trunk")]:
        audit_on_disk(**change)
        found, why = _find_audit(run, probe, data, None, "run", here)
        assert found is None and said in why and str(stored) in why
    rows = [dict(protocol=_audit_protocol(dict(n_images=32, seed=0, quick=1))),
            dict(protocol=_audit_protocol(dict(n_images=200, seed=0, quick=0)))]
    assert "different protocols (a: 32 images, seed 0, quick, b: 200 images" in \
        _mixed_protocols(["a", "b"], rows)[0]
    assert _mixed_protocols(["a", "b"], [rows[0], rows[0]]) == []
    from vaeprobe._cli_bits import _compare_status

    table = xr.Dataset({name: ("model", [1.0, math.nan]) for name in ("rate", "distortion",
                                                                     "bpd")},
                       coords={"model": ["a", "b"]},
                       attrs={"undefined": json.dumps({"b": ["likelihood: no likelihood"]})})
    assert _compare_status(table) == 3  # b's rate and distortion are NaN: not undefined
    table["rate"][1] = table["distortion"][1] = 0.5
    assert _compare_status(table) == 0  # b's bpd is NaN because its likelihood is undefined
    CORPUS.extend([("compare", "a quick audit beside a full one"),
                   ("compare", "an audit of another protocol on disk")])


# ---- Probe.from_module checks the module's answers --------------------------------------------

class _Tiny(torch.nn.Module):
    """A linear VAE on (1, 4, 4) images whose answers a test bends one at a time."""

    def __init__(self, encode_answer=None, decode_answer=None):
        super().__init__()
        self.enc, self.dec = torch.nn.Linear(16, 4), torch.nn.Linear(2, 16)
        self.encode_answer, self.decode_answer = encode_answer, decode_answer

    def encode(self, x):
        mean, logvar = self.enc(x.flatten(1)).chunk(2, dim=1)
        return (self.encode_answer or (lambda m, v: (m, v)))(mean, logvar)

    def decode(self, z):
        out = torch.sigmoid(self.dec(z)).view(-1, 1, 4, 4)
        return (self.decode_answer or (lambda o: o))(out)


@pytest.mark.parametrize("model, error, words", [
    (_Tiny(encode_answer=lambda m, v: (m[:1], v[:1])), ValueError, "one row per image"),
    (_Tiny(encode_answer=lambda m, v: (m.mean(0, keepdim=True), v.mean(0, keepdim=True))),
     ValueError, "do not reduce over the batch"),
    (_Tiny(encode_answer=lambda m, v: (m.round().long(), v.round().long())), TypeError,
     "floating"),
    (_Tiny(decode_answer=lambda o: o * 300), ValueError, "outside its declared range"),
    (_Tiny(decode_answer=lambda o: torch.tanh((o - 0.5) * 50)), ValueError,
     "(-1, 1) for tanh"),
    (_Tiny(decode_answer=lambda o: o.permute(0, 2, 3, 1).reshape(-1, 2, 8, 1)), ValueError,
     "permute"),
    (_Tiny(decode_answer=lambda o: (o * 255).to(torch.uint8)), TypeError, "floating")])
def test_from_module_checks_the_modules_answers(model, error, words):
    with pytest.raises(error, match=re.escape(words)):
        vp.Probe.from_module(model, image_shape=(1, 4, 4))
    CORPUS.append(("from_module", words))


def test_from_module_accepts_honest_answers_and_a_declared_range():
    probe = vp.Probe.from_module(_Tiny(), image_shape=(1, 4, 4))
    assert probe.layers[0].channels == 2
    scaled = _Tiny(decode_answer=lambda o: torch.tanh((o - 0.5) * 50))
    assert vp.Probe.from_module(scaled, image_shape=(1, 4, 4), output_range=(-1, 1),
                                pixel_range=(-1, 1)).output_range == (-1.0, 1.0)


# ---- the raw tracebacks and unclear words of issue 31: one line naming the file or argument ----

def test_devices_batch_sizes_pointers_and_pickled_npz_are_one_line(tiny_run, tmp_path, capsys,
                                                                 monkeypatch):
    run = str(tiny_run)
    refused("device", ["rate", run, "--data", "digits8:test", "--device", "potato"], capsys,
            "'potato' is not a device", "cpu, cuda or cuda:N")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in ("rate", "compress"):
        refused("device", [command, run, "--data", "digits8:test", "--device", "cuda"], capsys,
                "'cuda'", "no usable CUDA GPU", "--device cpu")
    refused("device", ["--preset", "tiny-8", "--data", "digits8", "--steps", "2", "--out",
                       str(tmp_path / "t"), "--device", "cuda"], capsys, "no usable CUDA GPU",
            main=_train)
    refused("arguments", ["iwae", run, "--data", "digits8:test", "-k", "2", "--batch-size",
                          "0"], capsys, "batch_size", ">= 1")
    refused("arguments", ["pca", "digits8:test", "--n-images", "1"], capsys, "n_images=1",
            "at least 2 images")
    refused("arguments", ["audit", run, "--data", "digits8:test", "--batch-size", "0", "--out",
                          str(tmp_path / "audit")], capsys, "batch_size", ">= 1")
    pythae = _copy(PYTHAE, tmp_path / "pythae")
    torch.save({"model_state_dict": [1, 2, 3]}, pythae / "model.pt")
    refused("files", ["rate", str(pythae), "--data", "digits8:test"], capsys,
            pythae / "model.pt", "'model_state_dict' dict of tensors", "found a list")
    pointer = tmp_path / "vae.pt"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
    refused("files", ["rate", str(pointer), "--data", "digits8:test"], capsys, pointer,
            "git-LFS pointer", "git lfs pull")
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, images=np.array([{"a": 1}], dtype=object))
    err = refused("data", ["rate", run, "--data", f"npz:{pickled}"], capsys, pickled,
                  "never loads", absent=("Traceback", "allow_pickle"))
    assert "uint8" in err


def test_an_empty_or_garbage_lock_left_by_a_killed_trainer_is_taken_over(tiny_run, tmp_path,
                                                                         capsys):
    run = _copy(tiny_run, tmp_path / "run")
    for content in ("", "garbage"):
        (run / ".lock").write_text(content)
        refused("lock", ["--out", str(run), "--resume", "--steps", "40"], capsys,
                "another trainer", main=_train)  # a fresh one: its writer may be writing it
        old = os.stat(run / ".lock").st_mtime - 60
        os.utime(run / ".lock", (old, old))
        assert _train(["--out", str(run), "--resume", "--steps", "40"]) == 0
        assert "took over an unreadable lock" in capsys.readouterr().err
        assert not (run / ".lock").exists()


def test_a_zeroed_fidelity_cache_entry_is_recomputed(tiny_run, tmp_path, monkeypatch):
    from conftest import STAND_IN_NETS

    monkeypatch.setenv("VAEPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VAEPROBE_OFFLINE", "1")
    options = dict(n_images=24, kinds=("mean",), kid_subset_size=20, n_diversity_pairs=4,
                   progress=False, feature_extractor=STAND_IN_NETS["feature_extractor"],
                   prc_extractor=STAND_IN_NETS["prc_extractor"],
                   lpips_trunk=STAND_IN_NETS["lpips_trunk"])
    first = vp.sample_quality(tiny_run, "digits8:test", **options)
    (entry,) = (tmp_path / "cache" / "fidelity").glob("reference-*.pt")
    stored = torch.load(entry, weights_only=True)
    torch.save({**stored, "features": torch.zeros_like(stored["features"])}, entry)
    again = vp.sample_quality(tiny_run, "digits8:test", **options)
    assert json.loads(again.attrs["reference_from_cache"]) == {
        STAND_IN_NETS["feature_extractor"]: False}  # the zeroed entry was not used
    assert float(again["fid"].sel(kind="mean")) == pytest.approx(
        float(first["fid"].sel(kind="mean")), rel=1e-6)
    CORPUS.append(("cache", "a zeroed fidelity-cache entry"))


# ---- outputs: inputs are never overwritten, nothing is half-written ----------------------------

def test_an_output_that_is_an_input_is_refused(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path / "run")
    checkpoint = vp.checkpoints(run)[-1][1]
    digest = io.sha256_file(checkpoint)
    refused("outputs", ["rate", str(checkpoint), "--data", "digits8:test", "--out",
                        str(checkpoint)], capsys, checkpoint, "input")
    refused("outputs", ["rate", str(run), "--data", "digits8:test", "--out",
                        str(run / "ckpt_step00000010.pt")], capsys, "ckpt_step00000010.pt")
    refused("outputs", ["rate", str(run), "--data", "digits8:test", "--out",
                        str(run / "config.json"), "--overwrite"], capsys, "config.json")
    assert io.sha256_file(checkpoint) == digest
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    refused("outputs", ["rate", str(run), "--data", "digits8:test", "--plot", str(notes)],
            capsys, notes, "--overwrite")
    assert notes.read_text() == "mine"


@pytest.mark.parametrize("command", [
    ["information", "{run}", "--data", "digits8:test"], ["iwae", "{run}", "--data",
                                                         "digits8:test"],
    ["spectrum", "{run}", "--data", "digits8:test"], ["samples", "{run}"],
    ["pca", "digits8:test"], ["compress", "{run}", "--data", "digits8:test"]])
def test_every_command_that_writes_refuses_inputs_and_unknown_files(command, tiny_run, tmp_path,
                                                                     capsys):
    run = _copy(tiny_run, tmp_path / "run")
    checkpoint = vp.checkpoints(run)[-1][1]
    digest = io.sha256_file(checkpoint)
    argv = [str(run) if part == "{run}" else part for part in command]
    if command[0] != "pca":
        refused("outputs", argv + ["--out", str(checkpoint), "--overwrite"], capsys, checkpoint)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    refused("outputs", argv + ["--plot", str(notes)], capsys, notes, "--overwrite")
    assert notes.read_text() == "mine" and io.sha256_file(checkpoint) == digest


def test_vaeprobe_results_are_replaced_and_others_only_with_overwrite(tiny_run, tmp_path,
                                                                      capsys):
    out, plot = tmp_path / "rate.nc", tmp_path / "rate.png"
    argv = ["rate", str(tiny_run), "--data", "digits8:test", "--n-images", "4", "--out",
            str(out), "--plot", str(plot)]
    assert cli.main(argv) == 0 and io.is_result(out) and io.is_result(plot)
    assert cli.main(argv) == 0  # its own results are replaced
    out.write_text("someone else's")
    assert cli.main(argv) == 2 and out.read_text() == "someone else's"
    assert cli.main(argv + ["--overwrite"]) == 0 and io.is_result(out)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(io.OutputError, match="not a vaeprobe result"):
        io.save(vp.open_results(out), tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "x"
    CORPUS.extend([("outputs", "replace a non-result .nc"), ("outputs", "vp.save over a file")])


def test_a_full_disk_leaves_nothing_half_written(tiny_run, tmp_path, monkeypatch, capsys):
    import matplotlib.figure

    def full(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half")  # some bytes land, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    def torch_full(payload, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")

    write_bytes = Path.write_bytes

    def full_bytes(self, data):  # vp.save encodes in memory, then writes the bytes
        write_bytes(self, b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    out, plot = tmp_path / "r.nc", tmp_path / "r.png"
    with monkeypatch.context() as disk:
        disk.setattr(Path, "write_bytes", full_bytes)
        disk.setattr(matplotlib.figure.Figure, "savefig", full)
        err = refused("full disk", ["rate", str(tiny_run), "--data", "digits8:test",
                                    "--n-images", "4", "--out", str(out), "--plot", str(plot)],
                      capsys, out, plot, "No space left on device", code=1)
    assert "computed but not saved" in err
    assert not out.exists() and not plot.exists()
    _no_temporaries(tmp_path)
    monkeypatch.setattr(torch, "save", torch_full)
    target = tmp_path / "ckpt_step00000001.pt"
    with pytest.raises(io.OutputError, match=str(target)):
        io.save_checkpoint(target, family="hvae", config={}, state_dict={}, step=1)
    assert not target.exists()
    _no_temporaries(tmp_path)
    with monkeypatch.context() as disk:  # torch's writer may only say where it stopped
        import shutil

        disk.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 9 vs 8")))
        disk.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(9, 9, 0))
        with pytest.raises(io.OutputError, match="No space left on device .0 bytes free"):
            io.save_checkpoint(target, family="hvae", config={}, state_dict={}, step=1)
    run = _copy(tiny_run, tmp_path / "run")
    (run / "ckpt_step00000040.pt").unlink()
    refused("full disk", ["--out", str(run), "--resume", "--steps", "40"], capsys,
            "ckpt_step00000040.pt", main=_train)
    assert [step for step, _ in vp.checkpoints(run)][-1] == 30
    _no_temporaries(run)
    CORPUS.append(("full disk", "torch.save of a checkpoint"))


def test_a_second_trainer_on_the_same_run_refuses_and_stale_locks_are_taken_over(
        tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path / "run")
    (run / ".lock").write_text(f"{os.uname().nodename} 1\n")  # pid 1 is alive
    refused("lock", ["--out", str(run), "--resume", "--steps", "40"], capsys, run,
            "another trainer", main=_train)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (run / ".lock").write_text(f"{os.uname().nodename} {gone}\n")
    assert _train(["--out", str(run), "--resume", "--steps", "40"]) == 0
    assert "took over the stale lock of process" in capsys.readouterr().err
    assert not (run / ".lock").exists()
    CORPUS.append(("lock", "stale lock of a dead pid"))


def test_resume_falls_back_past_a_corrupt_last_checkpoint(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path / "run")
    last = run / "ckpt_step00000040.pt"
    last.write_bytes(last.read_bytes()[:1000])
    assert _train(["--out", str(run), "--resume", "--steps", "40"]) == 0
    err = capsys.readouterr().err
    assert "skipping the checkpoint of step 40" in err and "step 30" in err
    assert io.read_checkpoint(last)["step"] == 40  # redone from step 30, written whole
    CORPUS.append(("resume", "truncated last checkpoint"))


# ---- first contact: the missing piece named, data that does not fit, Hub names ---------------

def test_first_contact_refusals_name_the_missing_piece(tiny_run, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from vaeprobe.adapters.disvae import BurgessVAE

    research = tmp_path / "results"
    research.mkdir()
    torch.save(BurgessVAE((1, 32, 32), 4).state_dict(), research / "model.pt")
    for argv in ([str(research)], [str(research / "model.pt")],
                 [str(research / "model.pt"), "--format", "disvae"]):
        refused("first contact", ["rate", *argv, "--data", "digits8:test"], capsys,
                research / "specs.json", "is missing")
    bare = tmp_path / "vae.pth"
    torch.save(torch.nn.Linear(4, 2).state_dict(), bare)
    refused("first contact", ["rate", str(bare), "--data", "digits8:test"], capsys, bare,
            "bare state dict", "vp.Probe.from_module(", "model_config.json")
    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(2):
        Image.new("RGB", (12, 10), (200, 30 * i, 90)).save(faces / f"{i}.png")
    refused("first contact", ["rate", str(tiny_run), "--data", f"folder:{faces}",
                              "--strict-data"], capsys, "converted to grey",
            "resized from 10x12 to 8x8", "--strict-data")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    refused("first contact", ["rate", "nobody/no-such-vae", "--data", "digits8:test"], capsys,
            "nobody/no-such-vae", tmp_path / "hub", "HF_HUB_OFFLINE=1")


def test_corpus_size():
    """The corpus the tests above ran (the release note quotes it: pytest -s prints it)."""
    from collections import Counter

    if CORPUS:  # empty when this test runs alone
        print(f"\nhostile corpus: {len(CORPUS)} cases; {dict(Counter(k for k, _ in CORPUS))}")
        assert len(CORPUS) >= 60, len(CORPUS)
