"""The real-model examples of the README and its user guide (docs/guide/*.md) run as written
(their ``../shared/realworld`` paths pointed at the real-world folder) and give the numbers they
state."""

import re
from pathlib import Path

import pytest
import realworld

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]


def _example(name: str) -> str:
    text = "".join(page.read_text() for page in PAGES)
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, f"neither the README nor docs/guide/*.md has the example {name!r}"
    return match.group(1).replace("../shared/realworld", str(realworld.path()))


def test_readme_btcvae_example(capsys):
    realworld.path("models", "disentangling-vae", "btcvae_mnist")
    namespace = {}
    exec(_example("btcvae"), namespace)
    rate, bound = namespace["rate"], namespace["bound"]
    assert int(rate["active_units"]) == 8
    inactive = [int(c) for c in rate["channel"] if not rate["active"].sel(layer=0, channel=c)]
    assert inactive == [2, 7]
    assert 8.5 < float(rate["total_rate"]) < 10  # "about 9 nats" (README of realworld)
    assert bound.attrs["binarize"] == "dynamic (seed=0)"
    assert 0.15 < float(bound["bpd_mean"]) < 0.3


def test_readme_taef2_example(capsys):
    realworld.path("models", "taef2")
    namespace = {}
    exec(_example("taef2"), namespace)
    assert namespace["photo"].shape == (1, 3, 512, 768)
    assert namespace["psnr"] == pytest.approx(33.4, abs=0.1)
    assert "deterministic autoencoder" in capsys.readouterr().out
