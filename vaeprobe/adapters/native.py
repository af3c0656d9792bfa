"""vaeprobe's own checkpoint format: the Probes of the model families we train, and opening.

A vaeprobe checkpoint (``ckpt_step*.pt`` / ``.safetensors`` in a run directory) is a dict of
tensors plus a JSON config naming its model ``family``. The families are registered in
:mod:`vaeprobe.models.families` (model class, builder, stored config); the Probe class of each
family is registered here, in :data:`probe_classes` (a new family registers its Probe with
``probe_classes.register("name", ProbeSubclass)``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from vaeprobe import io
from vaeprobe.adapters.format_registry import Format, formats
from vaeprobe.checkpoint import load_model
from vaeprobe.distributed import resolve_device
from vaeprobe.models.families import family_of
from vaeprobe.models.hvae import HVAE
from vaeprobe.models.two_stage import TwoStageVAE
from vaeprobe.probe import (
    Generators,
    LatentPass,
    LayerInfo,
    Probe,
    RepeatedRows,
    SharedEncoderProbe,
    check_n_fixed,
    per_layer_temperatures,
)
from vaeprobe.registry import Registry
from vaeprobe.run import CONFIG_NAME, checkpoint_step, checkpoints


class _NativeProbe(SharedEncoderProbe):
    """What vaeprobe's own probes share: device placement, and chunked encoding in which the
    deterministic encoder work (``_shared``) runs once per image and ``_draw`` once per chunk."""

    def __init__(self, model, device=None, source: dict | None = None):
        super().__init__(source)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()


class HVAEProbe(_NativeProbe):
    """Probe over a :class:`~vaeprobe.models.hvae.HVAE`."""

    def __init__(self, model: HVAE, device=None, source: dict | None = None):
        super().__init__(model, device, source)
        self.image_shape = model.image_shape
        self.layers = [LayerInfo(**info) for info in model.layer_info()]

    def rows_per_pass(self) -> int:
        if self.device.type == "cuda":
            return super().rows_per_pass()
        config = self.model.config  # about 2^21 activation elements (8 MiB) per tensor
        return max(1, 2 ** 21 // (config.width * config.image_size ** 2))

    def _shared(self, x):
        return RepeatedRows(self.model.posterior_contexts(self.model.bottom_up(x)))

    def _draw(self, contexts, k: int, noise) -> LatentPass:
        h, draws = self.model.top_down(contexts=contexts.rows(k), noise=noise)
        return LatentPass(draws, k, {"h": h})

    @torch.no_grad()
    def encode_given(self, x, zs, n_samples: int = 1) -> LatentPass:
        x = self.check_images(x)
        contexts = RepeatedRows(self.model.posterior_contexts(self.model.bottom_up(x)))
        h, draws = self.model.top_down(contexts=contexts.rows(n_samples), zs=list(zs))
        return LatentPass(draws, n_samples, {"h": h})

    @torch.no_grad()
    def decode(self, latents: LatentPass):
        h = latents.context.get("h")
        if h is None:
            h, _ = self.model.top_down(batch=latents.draws[0].z.shape[0],
                                       zs=[d.z for d in latents.draws])
        return self.model.likelihood(h)

    @torch.no_grad()
    def sample_prior(self, n: int, temperature=1.0, generator: Generators = None) -> LatentPass:
        h, draws = self.model.top_down(batch=n, temperature=temperature,
                                       noise=self.noise(n, 1, generator))
        return LatentPass(draws, 1, {"h": h})

    @torch.no_grad()
    def sample_prior_given(self, latents: LatentPass, n_fixed: int, temperature=1.0,
                           generator: Generators = None) -> LatentPass:
        check_n_fixed(n_fixed, len(self.layers))
        rows = latents.draws[0].z.shape[0]
        # None entries are drawn by the prior given the layers above (HVAE.top_down)
        zs = [d.z for d in latents.draws[:n_fixed]] + [None] * (len(self.layers) - n_fixed)
        h, draws = self.model.top_down(batch=rows, zs=zs, temperature=temperature,
                                       noise=self.noise(rows, 1, generator))
        return LatentPass(draws, 1, {"h": h})


class TwoStageProbe(_NativeProbe):
    """Probe over a :class:`~vaeprobe.models.two_stage.TwoStageVAE`: joint latents (z, z')."""

    def __init__(self, model: TwoStageVAE, device=None, source: dict | None = None):
        super().__init__(model, device, source)
        self.image_shape = model.primary.image_shape
        self.layers = [LayerInfo(name=f"{stage}.{info['name']}", resolution=info["resolution"],
                                 channels=info["channels"], stage=stage)
                       for stage in ("primary", "secondary")
                       for info in getattr(model, stage).layer_info()]
        self.n_primary = len(model.primary.decoder_layers)

    def _secondary(self, x_hat, noise, x):
        """The secondary's posterior pass on images ``x`` given the primary's ``x_hat``."""
        secondary = self.model.secondary
        return secondary.top_down(secondary.bottom_up(x, condition=x_hat), batch=x_hat.shape[0],
                                  condition_features=secondary.condition_features(x_hat),
                                  noise=noise)

    def _shared(self, x):
        primary = self.model.primary
        return RepeatedRows(primary.posterior_contexts(primary.bottom_up(x))), RepeatedRows([x])

    def _draw(self, shared, k: int, noise) -> LatentPass:
        contexts, images = shared
        primary = self.model.primary
        h1, draws1 = primary.top_down(contexts=contexts.rows(k), noise=noise[:self.n_primary])
        x_hat = primary.likelihood(h1).mean  # depends on z: the secondary runs per draw
        h2, draws2 = self._secondary(x_hat, noise[self.n_primary:], x=images.rows(k)[0])
        return LatentPass(draws1 + draws2, k, {"h": h2, "x_hat": x_hat})

    @torch.no_grad()
    def encode_given(self, x, zs, n_samples: int = 1) -> LatentPass:
        x = self.check_images(x)
        primary, secondary, cut = self.model.primary, self.model.secondary, self.n_primary
        contexts = RepeatedRows(primary.posterior_contexts(primary.bottom_up(x)))
        h1, draws1 = primary.top_down(contexts=contexts.rows(n_samples), zs=list(zs[:cut]))
        x_hat = primary.likelihood(h1).mean  # depends on z: the secondary runs per row
        x_rows = x.repeat_interleave(n_samples, 0)
        h2, draws2 = secondary.top_down(secondary.bottom_up(x_rows, condition=x_hat),
                                        batch=x_rows.shape[0], zs=list(zs[cut:]),
                                        condition_features=secondary.condition_features(x_hat))
        return LatentPass(draws1 + draws2, n_samples, {"h": h2, "x_hat": x_hat})

    @torch.no_grad()
    def decode(self, latents: LatentPass):
        h, x_hat = latents.context.get("h"), latents.context.get("x_hat")
        if h is None:
            zs = [d.z for d in latents.draws]
            rows = zs[0].shape[0]
            h1, _ = self.model.primary.top_down(batch=rows, zs=zs[:self.n_primary])
            x_hat = self.model.primary.likelihood(h1).mean
            secondary = self.model.secondary
            h, _ = secondary.top_down(batch=rows, zs=zs[self.n_primary:],
                                      condition_features=secondary.condition_features(x_hat))
        return self.model.secondary.likelihood(h, condition=x_hat)

    @torch.no_grad()
    def sample_prior(self, n: int, temperature=1.0, generator: Generators = None) -> LatentPass:
        return self._prior(n, [None] * len(self.layers), temperature, generator)

    @torch.no_grad()
    def sample_prior_given(self, latents: LatentPass, n_fixed: int, temperature=1.0,
                           generator: Generators = None) -> LatentPass:
        """Keep the first ``n_fixed`` layers (the primary's, then the secondary's) and draw the
        rest from the prior; the secondary is conditioned on the resulting x_hat."""
        check_n_fixed(n_fixed, len(self.layers))
        zs = [d.z for d in latents.draws[:n_fixed]] + [None] * (len(self.layers) - n_fixed)
        return self._prior(latents.draws[0].z.shape[0], zs, temperature, generator)

    def _prior(self, n: int, zs: list, temperature, generator: Generators) -> LatentPass:
        """Both stages top-down; ``None`` entries of ``zs`` are drawn from the prior."""
        temperatures = per_layer_temperatures(temperature, len(self.layers))
        noise, cut = self.noise(n, 1, generator), self.n_primary
        primary, secondary = self.model.primary, self.model.secondary
        h1, draws1 = primary.top_down(batch=n, zs=zs[:cut], temperature=temperatures[:cut],
                                      noise=noise[:cut])
        x_hat = primary.likelihood(h1).mean
        h2, draws2 = secondary.top_down(batch=n, zs=zs[cut:], temperature=temperatures[cut:],
                                        condition_features=secondary.condition_features(x_hat),
                                        noise=noise[cut:])
        return LatentPass(draws1 + draws2, 1, {"h": h2, "x_hat": x_hat})


def _check_probe_class(name: str, probe_class) -> None:
    if not (isinstance(probe_class, type) and issubclass(probe_class, Probe)):
        raise TypeError(f"the Probe of model family {name!r} must be a vaeprobe.probe.Probe "
                        f"subclass, got {probe_class!r}")


# model family name (vaeprobe.models.families) -> the Probe class that wraps its models
probe_classes = Registry("native Probe class", check=_check_probe_class)
probe_classes.register("hvae", HVAEProbe)
probe_classes.register("two_stage", TwoStageProbe)


def probe_for(model: nn.Module, device=None, source: dict | None = None) -> Probe:
    """Wrap one of vaeprobe's own models in the Probe registered for its family."""
    try:
        family = family_of(model)
    except TypeError:
        raise TypeError(f"no Probe for {type(model).__name__}; write an adapter in "
                        f"vaeprobe.adapters or use vp.Probe.from_module") from None
    if family not in probe_classes:
        raise TypeError(f"model family {family!r} has no Probe class; register one with "
                        f"vaeprobe.adapters.native.probe_classes.register({family!r}, "
                        f"ProbeSubclass)")
    return probe_classes.get(family)(model, device, source)


def open_native(path: str | os.PathLike, device=None, ema: bool = True) -> Probe:
    """A vaeprobe checkpoint (or a run directory's latest checkpoint) as a Probe."""
    model, payload = load_model(path, ema=ema)
    source = dict(format="vaeprobe", checkpoint=str(payload["path"]),
                  checkpoint_sha256=io.sha256_file(payload["path"]), step=payload["step"],
                  family=payload["family"], ema=int(payload["used_ema"]),
                  **decoder_facts(model))
    return probe_for(model, device=device, source=source)


def decoder_facts(model: nn.Module) -> dict:
    """Provenance of the decoder likelihood: its kind and the shared sigma it evaluates with
    (NaN for per-pixel and mixture heads). A two-stage model's decoder is its secondary's."""
    head = model.head
    return dict(decoder_likelihood=head.kind, decoder_sigma=head.shared_sigma())


def sniff(path: Path) -> bool:
    """A run directory (checkpoints, or the config a run writes first), a ``ckpt_step*`` file,
    or any ``.pt`` / ``.safetensors`` file that no other format claims (a fallback)."""
    if path.is_dir():
        return bool(checkpoints(path)) or _json_has(path / CONFIG_NAME, "train")
    return checkpoint_step(path) is not None or path.suffix in (".pt", ".safetensors")


def _json_has(path: Path, key: str) -> bool:
    try:
        return key in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False


formats.register("vaeprobe", Format(
    "vaeprobe.adapters.native:open_native", sniff,
    "a vaeprobe run directory or ckpt_step*.pt / .safetensors file", fallback=True))
