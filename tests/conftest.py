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
