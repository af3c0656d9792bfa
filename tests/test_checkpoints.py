import os

import pytest
import torch

import vaeprobe as vp
from vaeprobe import io
from vaeprobe.adapters.native import probe_for
from vaeprobe.models import HVAE, TwoStageVAE, preset, secondary_config
from vaeprobe.models.families import config_of, family_of


def _save(model, path, **kwargs):
    return io.save_checkpoint(path, family=family_of(model), config=config_of(model),
                              state_dict=model.state_dict(), step=7, **kwargs)


@pytest.mark.parametrize("two_stage", [False, True])
def test_save_load_gives_bit_identical_outputs(tmp_path, two_stage):
    torch.manual_seed(0)
    config = preset("tiny-8", likelihood="learned")
    model = TwoStageVAE(config, secondary_config(config)) if two_stage else HVAE(config)
    path = _save(model, tmp_path / "ckpt_step00000007.pt")
    probe = vp.load(tmp_path, device="cpu")
    original = probe_for(model, "cpu")
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    a = original.encode(x, generator=torch.Generator().manual_seed(1))
    b = probe.encode(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(original.decode(a).mean, probe.decode(b).mean)
    assert torch.equal(a.log_q(), b.log_q())
    assert probe.source["step"] == 7 and probe.source["checkpoint_sha256"] == io.sha256_file(path)
    assert vp.checkpoints(tmp_path) == [(7, path)]


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARKER']}",))


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    path = tmp_path / "ckpt_step00000001.pt"
    torch.save({"format": "vaeprobe-checkpoint", "payload": _Evil()}, path)
    with pytest.raises(io.CheckpointError, match="refused"):
        vp.load(path)
    assert not marker.exists()


def test_missing_truncated_foreign_and_unknown(tmp_path):
    with pytest.raises(FileNotFoundError):
        vp.load(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="cannot tell the format"):  # an empty folder
        vp.load(tmp_path)
    (tmp_path / "config.json").write_text('{"train": {}}')  # a run with no checkpoint yet
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        vp.load(tmp_path)
    (tmp_path / "config.json").unlink()
    model = HVAE(preset("tiny-8"))
    good = _save(model, tmp_path / "a.pt")
    (tmp_path / "b.pt").write_bytes(good.read_bytes()[:500])
    with pytest.raises(io.CheckpointError, match="truncated"):
        vp.load(tmp_path / "b.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "c.pt")
    with pytest.raises(io.CheckpointError, match="not a vaeprobe checkpoint"):
        vp.load(tmp_path / "c.pt")
    io.save_checkpoint(tmp_path / "d.pt", family="pixelcnn", config={}, state_dict={}, step=0)
    with pytest.raises(KeyError, match="unknown model family 'pixelcnn'"):
        vp.load(tmp_path / "d.pt")


def test_state_dict_mismatch_lists_keys_and_shapes(tmp_path):
    model = HVAE(preset("tiny-8"))
    state = model.state_dict()
    state.pop("initial_state")
    state["extra.weight"] = torch.zeros(3)
    state["head.out_conv.bias"] = torch.zeros(5)
    io.save_checkpoint(tmp_path / "m.pt", family="hvae", config=model.config.to_dict(),
                       state_dict=state, step=0)
    with pytest.raises(io.CheckpointError) as error:
        vp.load(tmp_path / "m.pt")
    message = str(error.value)
    assert "missing (1): initial_state (1, 16, 1, 1)" in message
    assert "unexpected (1): extra.weight (3,)" in message
    assert "head.out_conv.bias: checkpoint (5,) vs model (1,)" in message


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    model = HVAE(preset("tiny-8"))
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, tmp_path / "ckpt_step00000003.safetensors", metadata=dict(
        format="vaeprobe-checkpoint", format_version="1", family="hvae", step="3",
        config_json=__import__("json").dumps(model.config.to_dict())))
    probe = vp.load(tmp_path, device="cpu")
    assert probe.source["step"] == 3 and len(probe.layers) == 3


@pytest.mark.parametrize("content", [b"hello, this is text\n", b"e", b""])
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, content):
    (tmp_path / "notes.pt").write_bytes(content)
    with pytest.raises(io.CheckpointError, match="notes.pt is not a checkpoint"):
        vp.load(tmp_path / "notes.pt")
