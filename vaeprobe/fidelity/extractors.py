"""Feature extractors for FID / KID / precision-recall, registered by name.

Real networks are torch-fidelity's (TTUR-compatible Inception, VGG16), with weights found and
verified by :mod:`vaeprobe.weights`; the ``*-TEST-ONLY`` stand-ins are not pretrained and are
marked ``stand_in`` so that results computed with them say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vaeprobe import weights as vweights
from vaeprobe.io import sha256_file
from vaeprobe.registry import Registry

extractors = Registry("feature extractor")


@dataclass
class Extractor:
    """A feature network: uint8 (N, 3, H, W) -> float64 features (N, F)."""

    name: str
    network: nn.Module
    weights_sha256: str
    stand_in: bool = False  # True: NOT a pretrained network; results are not comparable

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        output = self.network(to_rgb(images))
        if isinstance(output, (tuple, list)):
            output = output[0]
        return output.double().flatten(1).cpu()


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) with C in (1, 3) -> uint8 (N, 3, H, W)."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def weights_key(name: str) -> str | None:
    """The :mod:`vaeprobe.weights` key a registered extractor needs (None: no file)."""
    return getattr(extractors.get(name), "weights_key", None)


def build_extractor(name: str, weights=None, device="cpu") -> Extractor:
    """The registered extractor ``name`` on ``device``; ``weights`` an explicit weights file."""
    return extractors.get(name)(weights=weights, device=device)


def _torch_fidelity_extractor(network_class: str, name: str, layer: str, weights_key: str,
                              weights, device) -> Extractor:
    """One of torch-fidelity's feature networks (``network_class``: "module:Class" within
    torch_fidelity), with verified weights found by vaeprobe. A missing weights file is
    refused before torch-fidelity (and torchvision, ~1.5 s) is imported."""
    import importlib

    path = vweights.resolve(weights_key, weights)
    vweights.load_state_dict(path)  # refuses files that would execute code
    module, cls = network_class.split(":")
    network = getattr(importlib.import_module(f"torch_fidelity.{module}"), cls)
    network = network(name, [layer], feature_extractor_weights_path=str(path))
    return Extractor(name, network.to(device), sha256_file(path))


@extractors.register("inception-v3-compat")
def _inception(weights=None, device="cpu") -> Extractor:
    return _torch_fidelity_extractor("feature_extractor_inceptionv3:FeatureExtractorInceptionV3",
                                     "inception-v3-compat", "2048", "inception-v3-compat",
                                     weights, device)


_inception.weights_key = "inception-v3-compat"  # which vaeprobe.weights file it needs


@extractors.register("vgg16-fc2")
def _vgg16(weights=None, device="cpu") -> Extractor:
    return _torch_fidelity_extractor("feature_extractor_vgg16:FeatureExtractorVGG16",
                                     "vgg16-fc2", "fc2_relu", "vgg16", weights, device)


_vgg16.weights_key = "vgg16"


class RandomConvNet(nn.Module):
    """A small randomly initialised conv net (seed 0): a stand-in for tests only."""

    def __init__(self, features: int = 64):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
            torch.manual_seed(0)
            self.body = nn.Sequential(
                nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, features))

    def forward(self, x):
        return self.body(x.float() / 127.5 - 1)


@extractors.register("random-convnet-TEST-ONLY")
def _random_convnet(weights=None, device="cpu") -> Extractor:
    return Extractor("random-convnet-TEST-ONLY", RandomConvNet().to(device).eval(),
                     "random-init-seed-0", stand_in=True)


class _Pixels(nn.Module):
    def forward(self, x):
        return x.double().flatten(1)


@extractors.register("pixels-TEST-ONLY")
def _pixels(weights=None, device="cpu") -> Extractor:
    return Extractor("pixels-TEST-ONLY", _Pixels(), "identity", stand_in=True)
