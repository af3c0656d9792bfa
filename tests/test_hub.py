"""Models by their Hugging Face Hub name: a cache laid out as huggingface_hub lays it out
(``models--org--name/snapshots/<commit>/``, ``refs/main``), built here; offline from it, and
online with the download function mocked (no network)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import vaeprobe as vp
from vaeprobe import hub
from vaeprobe.cli import main

pytest.importorskip("huggingface_hub")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DIFFUSERS = FIXTURES / "diffusers" / "tiny_vae"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
IMAGES = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(0))


def _cache(root: Path, repo: str, files: dict[str, Path]) -> Path:
    """A Hub cache holding ``repo`` at COMMIT (refs/main -> COMMIT), files as blobs with
    symlinks from the snapshot, as huggingface_hub writes them."""
    folder = root / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / COMMIT
    for name, source in files.items():
        blob = folder / "blobs" / f"{abs(hash((repo, name))):x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, blob)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(blob)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    return root


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _reference():
    probe = vp.load(DIFFUSERS, device="cpu")
    return probe.decode(probe.encode(IMAGES, posterior="mean")).mean


def test_a_hub_name_opens_offline_from_the_cache(offline_cache, monkeypatch, tmp_path):
    _cache(offline_cache, "org/tiny-vae", {f.name: f for f in DIFFUSERS.iterdir()})
    monkeypatch.chdir(tmp_path)  # no local folder "org/tiny-vae"
    probe = vp.load("org/tiny-vae", device="cpu")
    assert probe.source["format"] == "diffusers" and probe.source["hub_repo"] == "org/tiny-vae"
    assert probe.source["hub_revision"] == COMMIT
    mean = probe.decode(probe.encode(IMAGES, posterior="mean")).mean
    torch.testing.assert_close(mean, _reference())
    # the same through the command line
    assert main(["rate", "org/tiny-vae", "--data", "patches32:test", "--n-images", "2",
                 "--device", "cpu", "--posterior", "mean"]) == 0


def test_a_pipeline_repo_resolves_to_its_vae_and_a_revision_and_subfolder_are_honoured(
        offline_cache, monkeypatch, tmp_path):
    files = {f"vae/{f.name}": f for f in DIFFUSERS.iterdir()}
    index = tmp_path / "model_index.json"
    index.write_text('{"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", '
                     '"AutoencoderKL"]}')
    _cache(offline_cache, "org/pipeline", {"model_index.json": index, **files})
    monkeypatch.chdir(tmp_path)
    for options in ({}, {"subfolder": "vae"}, {"revision": COMMIT, "subfolder": "vae"}):
        probe = vp.load("org/pipeline", device="cpu", **options)
        assert probe.source["hub_subfolder"] == "vae", options
        assert probe.source["format"] == "diffusers"


def test_offline_and_not_cached_is_one_error_naming_the_repo_and_the_cache(offline_cache,
                                                                           monkeypatch,
                                                                           tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(hub.HubError) as caught:
        vp.load("org/absent", device="cpu")
    message = str(caught.value)
    assert "'org/absent'" in message and str(offline_cache) in message
    assert "HF_HUB_OFFLINE=1" in message
    assert main(["rate", "org/absent", "--data", "patches32:test", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "org/absent" in err and str(offline_cache) in err and "Traceback" not in err


def test_a_local_path_wins_over_a_hub_name(offline_cache, monkeypatch, tmp_path):
    local = tmp_path / "org" / "tiny-vae"
    shutil.copytree(DIFFUSERS, local)
    monkeypatch.chdir(tmp_path)
    probe = vp.load("org/tiny-vae", device="cpu")  # no cache entry: the local folder
    assert "hub_repo" not in probe.source and probe.source["format"] == "diffusers"


def test_online_fetches_only_the_vae_files(monkeypatch, tmp_path):
    """The download function mocked: it gets the repo, revision, user's cache and
    allow_patterns, and returns a snapshot folder it filled by those patterns."""
    import fnmatch

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    repo_files = {"model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
                  "unet/diffusion_pytorch_model.safetensors": b"UNET",
                  "text_encoder/model.safetensors": b"TEXT",
                  "vae/diffusion_pytorch_model.bin": b"PICKLE",
                  **{f"vae/{f.name}": f.read_bytes() for f in DIFFUSERS.iterdir()}}
    calls = []

    def snapshot_download(repo_id, *, revision=None, cache_dir=None, allow_patterns=None,
                          ignore_patterns=None, local_files_only=False, **other):
        calls.append(dict(repo_id=repo_id, revision=revision, cache_dir=cache_dir,
                          allow=allow_patterns, local=local_files_only))
        snapshot = Path(cache_dir) / "snapshot" / COMMIT
        for name, data in repo_files.items():
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns) and not any(
                    fnmatch.fnmatch(name, p) for p in ignore_patterns or []):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                (snapshot / name).write_bytes(data)
        return str(snapshot)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)
    probe = vp.load("org/pipeline", revision="v1", device="cpu")
    assert probe.source["hub_subfolder"] == "vae" and probe.source["format"] == "diffusers"
    assert {c["repo_id"] for c in calls} == {"org/pipeline"}
    assert {c["revision"] for c in calls} == {"v1"} and not any(c["local"] for c in calls)
    assert {c["cache_dir"] for c in calls} == {str(tmp_path / "cache")}
    fetched = sorted(str(p.relative_to(tmp_path / "cache" / "snapshot" / COMMIT))
                     for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert fetched == ["model_index.json", "vae/config.json",
                       "vae/diffusion_pytorch_model.safetensors"]
    np.testing.assert_allclose(probe.decode(probe.encode(IMAGES, posterior="mean")).mean,
                               _reference())


def test_without_huggingface_hub_the_error_says_how_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImportError, match=r"pip install 'vaeprobe\[hub\]'"):
        vp.load("org/name", device="cpu")
