import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A short distortion-targeted run of tiny-8 on digits8, with several checkpoints."""
    from trainers.config import make
    from trainers.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(make(preset="tiny-8", data="digits8", objective="distortion", gamma=2.0, steps=40,
               ckpt_every=10, log_every=10, progress=False, out=str(out), seed=0))
    return out


@pytest.fixture(scope="session")
def digits_test():
    import vaeprobe as vp

    return vp.data.load("digits8", split="test")


# random-init feature networks: FID/PRC/LPIPS run without downloads (and say so in attrs)
STAND_IN_NETS = dict(feature_extractor="random-convnet-TEST-ONLY",
                     prc_extractor="random-convnet-TEST-ONLY", lpips_trunk="random-TEST-ONLY")


@pytest.fixture
def offline_weights(monkeypatch, tmp_path):
    """No pretrained weights reachable: no downloads, an empty torch hub, no weights dir."""
    monkeypatch.setenv("VAEPROBE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("VAEPROBE_WEIGHTS_DIR", raising=False)


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test, as its subprocesses (OMP_NUM_THREADS=1) run:
    float32 reductions then round alike, so in-process and subprocess numbers compare exactly
    (``make test`` itself runs with torch's default threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CallCounts(dict):
    """Calls counted by name: :meth:`track` wraps a function wherever it is looked up."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.monkeypatch = monkeypatch

    def track(self, key: str, *places) -> None:
        """Count calls of the function at the first ``(module, name)`` of ``places`` under
        ``key``; every place gets the one wrapper, so a call through any of them counts once."""
        original = getattr(*places[0])
        self[key] = 0

        def wrapper(*args, **kwargs):
            self[key] += 1
            return original(*args, **kwargs)

        for module, name in places:
            self.monkeypatch.setattr(module, name, wrapper)


@pytest.fixture
def resolutions(monkeypatch):
    """Counts of the calls that open a model (``as_probe``) and fit images to it
    (``fit_probe``), wherever they are made from."""
    import vaeprobe.adapters
    from vaeprobe import _analysis
    from vaeprobe.audit import run as audit_run

    counts = CallCounts(monkeypatch)
    counts.track("as_probe", (vaeprobe.adapters, "as_probe"))
    counts.track("fit_probe", (_analysis, "fit_probe"), (audit_run, "fit_probe"))
    return counts
