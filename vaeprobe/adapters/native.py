"""vaeprobe's own checkpoint format: the model families we train, their Probes, and loading.

A vaeprobe checkpoint (``ckpt_step*.pt`` / ``.safetensors`` in a run directory) is a dict of
tensors plus a JSON config naming its model ``family``. Each family is one registry entry
(:data:`families`) that carries its model class, its builder from the stored config, the
config it stores, and its Probe class.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vaeprobe import io, validate
from vaeprobe.adapters._common import check_state_dict
from vaeprobe.models.hvae import HVAE, HVAEConfig
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


class _NativeProbe(SharedEncoderProbe):
    """What vaeprobe's own probes share: device placement, and chunked encoding in which the
    deterministic encoder work (``_shared``) runs once per image and ``_draw`` once per chunk."""

    def __init__(self, model, device=None, source: dict | None = None):
        super().__init__(source)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
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


@dataclass(frozen=True)
class Family:
    """One model family: how to build it from a stored config, what config it stores, and the
    Probe that wraps it."""

    model_class: type[nn.Module]
    build: Callable[[dict], nn.Module]
    config_of: Callable[[nn.Module], dict]
    probe_class: type[Probe]


def _check_family(name: str, family) -> None:
    if not isinstance(family, Family):
        raise TypeError(f"model family {name!r} must be registered as a Family, got "
                        f"{type(family).__name__}")
    if not (isinstance(family.model_class, type) and issubclass(family.model_class, nn.Module)):
        raise TypeError(f"model family {name!r}: model_class must be an nn.Module subclass")
    if not (isinstance(family.probe_class, type) and issubclass(family.probe_class, Probe)):
        raise TypeError(f"model family {name!r}: probe_class must be a Probe subclass")


families = Registry("model family", check=_check_family)


def _build_two_stage(config: dict) -> TwoStageVAE:
    if set(config) != {"primary", "secondary"}:
        raise ValueError(f"a two_stage config has keys 'primary' and 'secondary', got "
                         f"{sorted(config)}")
    return TwoStageVAE(HVAEConfig.from_dict(config["primary"]),
                       HVAEConfig.from_dict(config["secondary"]))


families.register("hvae", Family(HVAE, lambda config: HVAE(HVAEConfig.from_dict(config)),
                                 lambda model: model.config.to_dict(), HVAEProbe))
families.register("two_stage", Family(TwoStageVAE, _build_two_stage,
                                      lambda model: model.config, TwoStageProbe))


def build(family: str, config: dict) -> nn.Module:
    """Build a registered model family from its JSON-able config."""
    return families.get(family).build(config)


def family_of(model: nn.Module) -> str:
    """The registered family name of one of vaeprobe's own models."""
    for name in families.names():
        if type(model) is families.get(name).model_class:
            return name
    raise TypeError(f"not a vaeprobe model: {type(model).__name__}; registered families: "
                    f"{', '.join(families.names())}")


def config_of(model: nn.Module) -> dict:
    """The JSON-able config a checkpoint stores for ``model``."""
    return families.get(family_of(model)).config_of(model)


def probe_for(model: nn.Module, device=None, source: dict | None = None) -> Probe:
    """Wrap one of vaeprobe's own models in its Probe."""
    try:
        family = families.get(family_of(model))
    except TypeError:
        raise TypeError(f"no Probe for {type(model).__name__}; write an adapter in "
                        f"vaeprobe.adapters or use vp.Probe.from_module") from None
    return family.probe_class(model, device, source)


# key -> (kind, low, high): an HVAE config as a checkpoint stores it (bounds far above every
# preset; the memory estimate guards the combinations)
HVAE_SPEC = {
    "image_channels": ("int", 1, 3), "image_size": ("int", 1, 1 << 14),
    "width": ("int", 1, 1 << 16), "bottleneck": ("int", 1, 1 << 16),
    "latent_channels": ("int", 1, 1 << 14), "encoder_blocks": ("int", 0, 256),
    "merge": ("str", None, None), "likelihood": ("str", None, None),
    "sigma": ("float", 1e-12, None), "n_mixtures": ("int", 1, 1024),
    "condition_channels": ("int", 0, 64), "residual": ("bool", None, None),
    "residual_gain": ("float", 0.0, None),
}
MAX_LATENT_LAYERS = 4096


def _check_hvae_config(config, where: str) -> int:
    """Types and ranges of a stored HVAE config; returns its latent values per image."""
    validate.check_fields(config, HVAE_SPEC, where)
    layers = config.get("layers", ())
    if not isinstance(layers, (list, tuple)) or not layers or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in layers):
        raise validate.ConfigError(f"{where}: layers must be a non-empty list of [resolution, "
                                   f"count] pairs, got {layers!r}"[:300])
    for pair in layers:
        validate.check_value(list(pair), "ints", where, "layers", 1, 1 << 14)
    if sum(count for _, count in layers) > MAX_LATENT_LAYERS:
        raise validate.ConfigError(f"{where}: layers {layers} declare more than "
                                   f"{MAX_LATENT_LAYERS} latent layers")
    latent = config.get("latent_channels", 16)
    return sum(count * latent * resolution ** 2 for resolution, count in layers)


def check_stored_config(family: str, config: dict, path) -> None:
    """A checkpoint's family and config checked (types, ranges) and its memory estimated, all
    before the network is built; errors name the file and the key."""
    families.get(family)  # an unknown family: a KeyError listing the registered ones
    parts = {"": config} if family == "hvae" else config
    if family == "two_stage" and (not isinstance(config, dict) or
                                  set(config) != {"primary", "secondary"}):
        raise validate.ConfigError(f"{path}: a two_stage config has keys 'primary' and "
                                   f"'secondary'")
    latents, widest = 0, 0
    if family in ("hvae", "two_stage"):
        for name, part in parts.items():
            where = f"{path} (config{'.' + name if name else ''})"
            latents += _check_hvae_config(part, where)
            widest = max(widest, part.get("width", 128) * part.get("image_size", 32) ** 2)
    try:
        parameters = validate.count_parameters(lambda: build(family, config))
    except (TypeError, ValueError) as error:
        raise validate.ConfigError(f"{path}: its config does not describe a {family} model: "
                                   f"{error}") from None
    validate.check_budget(parameters=parameters, activations=6 * widest + 6 * latents,
                          file=path, key=f"the stored {family} config")


def load_model(path: str | os.PathLike, *, ema: bool = True):
    """(model, payload) from a vaeprobe checkpoint file or run directory (latest checkpoint)."""
    path = io.resolve_checkpoint(path)
    payload = io.read_checkpoint(path)
    check_stored_config(payload["family"], payload["config"], path)
    model = build(payload["family"], payload["config"])
    state = payload["ema_state_dict"] if ema and payload.get("ema_state_dict") else \
        payload["state_dict"]
    check_state_dict(model, state, path)
    model.load_state_dict(state)
    payload["path"] = path
    payload["used_ema"] = bool(ema and payload.get("ema_state_dict"))
    return model.eval(), payload


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
