"""LPIPS from the ``lpips`` package, on uint8 images; trunks registered by name.

A trunk is how the network's backbone gets its weights: ``alexnet`` loads torchvision's
pretrained AlexNet (found and verified by :mod:`vaeprobe.weights`), ``random-TEST-ONLY`` keeps a
seeded random initialisation (tests; results are marked as stand-ins).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vaeprobe import weights as vweights
from vaeprobe.fidelity.extractors import to_rgb
from vaeprobe.io import sha256_file
from vaeprobe.registry import Registry


@dataclass(frozen=True)
class Trunk:
    """How an LPIPS backbone gets its weights."""

    load: Callable[[nn.Module, object], str]  # (lpips' backbone, weights path) -> sha256
    stand_in: bool  # True: NOT pretrained; results are not comparable
    weights_key: str | None = None  # the vaeprobe.weights file it needs (None: no file)


lpips_trunks = Registry("LPIPS trunk")


def _load_alexnet(backbone: nn.Module, weights) -> str:
    """Map torchvision's ``features.<i>.<param>`` onto lpips' ``slice<k>.<i>.<param>``."""
    path = vweights.resolve("alexnet", weights)
    state = vweights.load_state_dict(path)
    mapped = {}
    for name, _ in backbone.named_parameters():
        _, index, param = name.split(".")
        mapped[name] = state[f"features.{index}.{param}"]
    backbone.load_state_dict(mapped)
    return sha256_file(path)


lpips_trunks.register("alexnet", Trunk(_load_alexnet, stand_in=False,
                                                weights_key="alexnet"))
lpips_trunks.register("random-TEST-ONLY", Trunk(lambda backbone, weights: "random-init",
                                                stand_in=True))


class LPIPS:
    """LPIPS distance on uint8 images, checked inputs in [-1, 1].

    ``trunk="alexnet"`` loads pretrained AlexNet weights (see :mod:`vaeprobe.weights`);
    ``trunk="random-TEST-ONLY"`` keeps a randomly initialised trunk (tests; marked in attrs).
    Other trunks register in :data:`lpips_trunks`.
    """

    MIN_SIDE = 32  # AlexNet's pooling needs at least this; smaller images are upsampled

    def __init__(self, trunk: str = "alexnet", weights=None, device="cpu"):
        import warnings

        import lpips

        if trunk not in lpips_trunks:
            raise ValueError(f"trunk must be one of {lpips_trunks.names()}, got {trunk!r}")
        self.device, self.trunk = device, trunk
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore", UserWarning)  # torchvision's pretrained= notice
            torch.manual_seed(0)  # the random trunk (tests) is the same on every build
            self.model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
        self.model = self.model.to(device).eval()
        chosen = lpips_trunks.get(trunk)
        self.stand_in = chosen.stand_in
        self.weights_sha256 = chosen.load(self.model.net, weights)

    @torch.no_grad()
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-pair LPIPS of float images already in [-1, 1] (N, 3, H, W)."""
        for image in (a, b):
            if image.dtype == torch.uint8 or float(image.min()) < -1 or float(image.max()) > 1:
                raise ValueError(
                    f"LPIPS expects float images in [-1, 1], got {image.dtype} in "
                    f"[{float(image.min()):g}, {float(image.max()):g}]; convert uint8 with "
                    f"x / 127.5 - 1 (or use LPIPS.__call__ on uint8)")
        return self.model(a, b).flatten().double().cpu()

    def __call__(self, a_uint8: torch.Tensor, b_uint8: torch.Tensor) -> torch.Tensor:
        """LPIPS of uint8 images; sides below MIN_SIDE are bilinearly upsampled to it."""
        def scale(x):
            x = to_rgb(x).float() / 127.5 - 1
            if min(x.shape[-2:]) < self.MIN_SIDE:
                x = torch.nn.functional.interpolate(x, size=(self.MIN_SIDE, self.MIN_SIDE),
                                                    mode="bilinear", align_corners=False)
            return x.clamp(-1, 1)
        return self.distance(scale(a_uint8), scale(b_uint8))
