"""Datasets, likelihood heads and objectives register through vaeprobe.registry.Registry."""

import pytest
import torch

from trainers import config as train_config
from trainers.objectives import Objective, objectives
from vaeprobe import data
from vaeprobe.models.likelihoods import LIKELIHOODS, HeadKind, LikelihoodHead, likelihoods


def test_a_registered_dataset_loads_by_name_and_split():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
    seen = []

    def loader(split, root, download, size):
        seen.append((split, root))
        return data.ImageTensorDataset(images, name=f"toy:{split}")

    data.datasets.register("toy-test-only", loader)
    try:
        ds = data.load("toy-test-only:test", root="/somewhere")
        assert seen == [("test", "/somewhere")] and torch.equal(ds[1], images[1])
        assert "toy-test-only" in data.names()
        with pytest.raises(ValueError, match="already registered"):
            data.datasets.register("toy-test-only", lambda *a: None)
    finally:
        data.datasets._entries.pop("toy-test-only")
    with pytest.raises(TypeError, match="callable"):
        data.datasets.register("broken", "not a loader")
    assert data.names()[:4] == ["patches16", "patches32", "patches64", "digits8"]
    assert data.names()[-2:] == ["folder:PATH", "npz:PATH"]


def test_the_embedded_datasets_are_the_registered_loaders():
    direct = torch.from_numpy(data.load_patches(16, "test"))
    assert torch.equal(data.load("patches16:test").images, direct)
    with pytest.raises(ValueError, match="unknown dataset 'patches48'.*patches16"):
        data.load("patches48")


def test_likelihood_heads_come_from_the_registry_and_are_checked():
    assert LIKELIHOODS == ("fixed", "learned", "optimal", "per_pixel", "dmol")
    help_text = " ".join(train_config.parser().format_help().split())
    assert "--likelihood {fixed,learned,optimal,per_pixel,dmol}" in help_text
    for kind in LIKELIHOODS:  # each is accepted by the command line and builds its head
        assert train_config.parser().parse_args(["--likelihood", kind]).likelihood == kind
    # the conv's outputs per kind: mean (+ log sigma per pixel); dmol: 10 * (1 + 6 + 3) for RGB
    widths = {kind: LikelihoodHead(kind, 8, 3).out_conv.out_channels for kind in LIKELIHOODS}
    assert widths == dict(fixed=3, learned=3, optimal=3, per_pixel=6, dmol=100)
    with pytest.raises(TypeError, match="HeadKind"):
        likelihoods.register("bad", lambda c, m: c)
    with pytest.raises(ValueError, match="sigma must be one of"):
        likelihoods.register("bad", HeadKind(lambda c, m: c, "guessed", "no such source"))
    assert "bad" not in likelihoods
    with pytest.raises(ValueError, match="likelihood must be one of"):
        LikelihoodHead("laplace", 8, 3)


def test_objectives_come_from_the_registry_and_are_checked():
    assert train_config.OBJECTIVES == ("elbo", "distortion", "two-stage")
    assert [objectives.get(n).target for n in train_config.OBJECTIVES] == [None, "gamma", "gamma"]
    assert [objectives.get(n).decoder for n in train_config.OBJECTIVES] == ["", "optimal",
                                                                           "optimal"]
    with pytest.raises(ValueError, match="needs --primary"):
        train_config.TrainConfig(objective="two-stage")
    with pytest.raises(ValueError, match="objective must be one of"):
        train_config.TrainConfig(objective="gan")
    with pytest.raises(TypeError, match="Objective"):
        objectives.register("bad", lambda parts, dims: {})
    with pytest.raises(ValueError, match="distortion target"):
        objectives.register("bad", Objective(lambda terms: 0, "", needs_primary=True))
    with pytest.raises(TypeError, match=r"must take \['beta'\] by name"):
        objectives.register("bad", Objective(lambda terms: 0, "", fields=("beta",)))
    assert "bad" not in objectives
