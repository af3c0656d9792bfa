"""openai/vdvae checkpoints (``*-model-ema.th`` / ``*-model.th``) -> a Probe.

VDVAE saves ``torch.save(model.state_dict())``: the trained model's file carries DDP's
``module.`` prefix, the EMA copy's does not; both are read with ``torch.load(weights_only=True)``
only and loaded strictly into :class:`vaeprobe.models.vdvae.VDVAE`. The hyperparameters are not in
the file: they come from ``hparams=`` (a VDVAE set name, a dict or a JSON file of its keys) or
from the training log VDVAE copies next to the checkpoint (``<prefix>-log.jsonl``).

The probe takes uint8 images, applies VDVAE's per-dataset input normalisation, and returns its
discretized mixture of logistics; FFHQ-256 is modelled at 5 bits (``n_bits = 5``). There,
VDVAE's own loss uses bins of half-width 1/31 around levels 8k (overlapping slightly) and no
upper tail; vaeprobe's is a proper PMF over the 32 levels (midpoint bins, edge tails), so its
bits/dim differ slightly from VDVAE's reported ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from vaeprobe import io, validate
from vaeprobe.adapters._common import read_tensors
from vaeprobe.adapters.format_registry import Format, formats
from vaeprobe.distributed import resolve_device
from vaeprobe.models.likelihoods import DiscretizedLogisticMixture
from vaeprobe.models.vdvae import (
    NAMED_HPARAMS,
    VDVAE,
    VDVAEHparams,
    hparams_from,
    parse_layer_string,
    widths,
)
from vaeprobe.probe import (
    Generators,
    LatentPass,
    LayerDraw,
    LayerInfo,
    RepeatedRows,
    SharedEncoderProbe,
    check_n_fixed,
    gaussian_kl,
    per_layer_temperatures,
)

EMA_SUFFIX, MODEL_SUFFIX, LOG_SUFFIX = "-model-ema.th", "-model.th", "-log.jsonl"
DDP_PREFIX = "module."


# ---- files -------------------------------------------------------------------------------------

def sniff(path: str | os.PathLike) -> bool:
    """True for a VDVAE checkpoint file, or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        return any(p.name.endswith((EMA_SUFFIX, MODEL_SUFFIX)) for p in path.iterdir())
    return path.name.endswith((EMA_SUFFIX, MODEL_SUFFIX))


def find_checkpoint(path: str | os.PathLike, ema: bool | None = None) -> Path:
    """The weights file: ``path`` itself, or in the folder ``path`` the one ``*-model-ema.th``
    (``ema=True``; ``None``: it if there is one, else the ``*-model.th``) or ``*-model.th``
    (``ema=False``)."""
    path = Path(path)
    if path.is_file():
        is_ema = path.name.endswith(EMA_SUFFIX)
        if not path.name.endswith((EMA_SUFFIX, MODEL_SUFFIX)):
            raise io.CheckpointError(f"{path} is not a VDVAE checkpoint: expected a file named "
                                     f"*{EMA_SUFFIX} or *{MODEL_SUFFIX}")
        if ema is not None and ema != is_ema:
            wanted = EMA_SUFFIX if ema else MODEL_SUFFIX
            raise ValueError(f"ema={ema} but {path} is the {'EMA' if is_ema else 'trained'} "
                             f"model's file; pass its *{wanted} sibling or leave ema unset")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"VDVAE checkpoint or folder not found: {path}")
    ema_files = sorted(p for p in path.iterdir() if p.name.endswith(EMA_SUFFIX))
    model_files = sorted(p for p in path.iterdir() if p.name.endswith(MODEL_SUFFIX))
    use_ema = ema if ema is not None else bool(ema_files) or not model_files
    suffix, found = (EMA_SUFFIX, ema_files) if use_ema else (MODEL_SUFFIX, model_files)
    if len(found) != 1:
        listing = ", ".join(p.name for p in found) or "none"
        raise io.CheckpointError(f"expected one *{suffix} file in {path}, found {listing}; pass "
                                 f"the checkpoint file itself")
    return found[0]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A VDVAE state dict read with ``torch.load(weights_only=True)``, DDP prefix removed.

    A file whose unpickling would build other objects (and could run code) is refused without
    running it; the error names the file.
    """
    state = read_tensors(path)  # weights_only=True; a code-running pickle is refused
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise io.CheckpointError(f"{path} is not a VDVAE state dict (a dict of named tensors)")
    prefixed = [k.startswith(DDP_PREFIX) for k in state]
    if any(prefixed):
        if not all(prefixed):
            raise io.CheckpointError(f"{path} mixes keys with and without the DDP prefix "
                                     f"{DDP_PREFIX!r}")
        state = {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    return state


def log_hparams(checkpoint: Path) -> tuple[dict, Path] | None:
    """The hparams VDVAE logged (``{"type": "hparam", "key": k, "value": v}`` lines) in the log
    it copies next to a checkpoint, ``<prefix>-log.jsonl``; None when there is none."""
    name = checkpoint.name
    prefix = name[:-len(EMA_SUFFIX)] if name.endswith(EMA_SUFFIX) else name[:-len(MODEL_SUFFIX)]
    log = checkpoint.with_name(prefix + LOG_SUFFIX)
    if not log.is_file():
        return None
    values = {}
    for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
        try:
            entry = json.loads(line) if line.strip() else {}
        except ValueError:
            raise validate.ConfigError(f"{log} line {number} is not JSON: {line[:60]!r}; pass "
                                       f"hparams= instead") from None
        if isinstance(entry, dict) and entry.get("type") == "hparam" and "key" in entry:
            values[str(entry["key"])] = entry.get("value")
    return (values, log) if values else None


def check_state_dict(model: torch.nn.Module, state: dict, path: Path, hparams) -> None:
    """Raise a CheckpointError listing missing / unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [f"{k} {tuple(v.shape)}" for k, v in expected.items() if k not in state]
    unexpected = [f"{k} {tuple(v.shape)}" for k, v in state.items() if k not in expected]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        lines = [f"the weights in {path} do not fit the VDVAE that hparams={hparams!r} "
                 f"describes; pass the hparams it was trained with (one of "
                 f"{sorted(NAMED_HPARAMS)}, a dict or a JSON file):"]
        for title, rows in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", mismatched)):
            if rows:
                lines.append(f"  {title} ({len(rows)}): " + "; ".join(rows[:10])
                             + (" ..." if len(rows) > 10 else ""))
        raise io.CheckpointError("\n".join(lines))
    validate.check_weights(state, expected, path)


# key -> (kind, low, high): the network's keys in a hparams dict, JSON file or training log
HPARAMS_SPEC = {
    "dataset": ("str", None, None), "width": ("int", 1, 1 << 16), "zdim": ("int", 1, 1 << 14),
    "dec_blocks": ("str", None, None), "enc_blocks": ("str", None, None),
    "custom_width_str": ("str", None, None), "bottleneck_multiple": ("float", 1e-6, 64.0),
    "no_bias_above": ("int", 0, 1 << 16), "num_mixtures": ("int", 1, 1024),
    "image_size": ("int", 0, 1 << 14),
}
MAX_BLOCKS = 2048  # encoder + decoder blocks (VDVAE's largest, FFHQ-1024, has about 200)


def checked_hparams(spec, where: str) -> VDVAEHparams:
    """VDVAE hparams from a set name, a dict or a JSON file, every key checked (types, ranges,
    the number of blocks) before a network is built; errors name ``where`` and the key."""
    if isinstance(spec, (str, Path)) and str(spec) not in NAMED_HPARAMS and (
            Path(spec).suffix == ".json" or Path(spec).is_file()):
        if not Path(spec).is_file():
            raise FileNotFoundError(f"VDVAE hparams file not found: {spec}")
        where, spec = str(spec), validate.json_object(Path(spec), "VDVAE hparams")
    if isinstance(spec, dict):
        validate.check_fields(spec, HPARAMS_SPEC, where)
    try:
        config = hparams_from(spec)
        blocks = len(parse_layer_string(config.dec_blocks)) + \
            len(parse_layer_string(config.enc_blocks))
        sizes = widths(config)
    except (ValueError, TypeError, KeyError) as error:
        raise validate.ConfigError(f"{where}: {_error_text(error)}") from None
    if blocks > MAX_BLOCKS or max(sizes) > 1 << 14:
        raise validate.ConfigError(f"{where}: {blocks} blocks up to resolution {max(sizes)}; "
                                   f"at most {MAX_BLOCKS} blocks and 16384 px are supported")
    return config


def _error_text(error: BaseException) -> str:
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def check_budget(config: VDVAEHparams, where: str) -> None:
    """Refuse, before building, a VDVAE whose weights plus one image's activations exceed the
    memory limit (parameters counted on the meta device)."""
    parameters = validate.count_parameters(lambda: VDVAE(config))
    largest = max(width * resolution ** 2 for resolution, width in widths(config).items())
    blocks = len(parse_layer_string(config.dec_blocks))
    # the decoder keeps one activation per resolution, the encoder hands one per resolution up
    activations = 6 * largest + blocks * config.zdim * config.resolution ** 2
    validate.check_budget(parameters=parameters, activations=activations, file=where,
                          key=f"width={config.width}, dec_blocks={config.dec_blocks!r} at "
                              f"{config.resolution} px")


# ---- the probe ---------------------------------------------------------------------------------

class VDVAEProbe(SharedEncoderProbe):
    """Probe over a :class:`~vaeprobe.models.vdvae.VDVAE`: one layer per decoder block."""

    likelihood_kind = "discretized"
    prior_is_generative = True

    def __init__(self, model: VDVAE, device=None, source: dict | None = None):
        super().__init__(source)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        hparams = model.hparams
        self.n_bits = hparams.n_bits
        self.image_shape = (3, hparams.resolution, hparams.resolution)
        self.layers = [LayerInfo(name=f"z{i:02d}_r{r}", resolution=(r, r), channels=hparams.zdim)
                       for i, r in enumerate(model.layer_resolutions())]

    def rows_per_pass(self) -> int:
        if self.device.type == "cuda":
            return super().rows_per_pass()
        hparams = self.model.hparams  # about 2^21 activation elements (8 MiB) per tensor
        return max(1, 2 ** 21 // (hparams.width * hparams.resolution ** 2))

    def likelihood(self, features: torch.Tensor) -> DiscretizedLogisticMixture:
        """VDVAE's output distribution from the decoder's final features."""
        return DiscretizedLogisticMixture(
            self.model.output_params(features), 3, self.model.hparams.num_mixtures,
            layout="vdvae", n_bits=self.n_bits)

    def _shared(self, x):
        """The bottom-up pass, once per image; repeated per draw (image-major rows: row
        i * k + j is draw j of image i)."""
        return RepeatedRows(self.model.posterior_contexts(self.model.bottom_up(x)))

    def _draw(self, contexts, k: int, noise) -> LatentPass:
        # the posterior mean comes as zero noise (Probe.noise): q_mean + q_std * 0 = q_mean
        features, draws = self.model.top_down(batch=noise[0].shape[0], contexts=contexts.rows(k),
                                              noise=noise)
        return LatentPass([_layer_draw(d) for d in draws], k, {"features": features})

    @torch.no_grad()
    def encode_given(self, x, zs, n_samples: int = 1) -> LatentPass:
        x = self.check_images(x)
        contexts = RepeatedRows(self.model.posterior_contexts(self.model.bottom_up(x)))
        features, draws = self.model.top_down(batch=x.shape[0] * n_samples,
                                              contexts=contexts.rows(n_samples), zs=list(zs),
                                              posterior_mean=True)
        return LatentPass([_layer_draw(d) for d in draws], n_samples, {"features": features})

    @torch.no_grad()
    def decode(self, latents: LatentPass) -> DiscretizedLogisticMixture:
        features = latents.context.get("features")
        if features is None:
            zs = [d.z.to(self.device) for d in latents.draws]
            features, _ = self.model.top_down(batch=zs[0].shape[0], zs=zs)
        return self.likelihood(features)

    @torch.no_grad()
    def sample_prior(self, n: int, temperature=1.0, generator: Generators = None) -> LatentPass:
        temperatures = per_layer_temperatures(temperature, len(self.layers))
        features, draws = self.model.top_down(batch=n, noise=self.noise(n, 1, generator),
                                              temperature=temperatures)
        return LatentPass([_layer_draw(d) for d in draws], 1, {"features": features})

    @torch.no_grad()
    def sample_prior_given(self, latents: LatentPass, n_fixed: int, temperature=1.0,
                           generator: Generators = None) -> LatentPass:
        check_n_fixed(n_fixed, len(self.layers))
        rows = latents.draws[0].z.shape[0]
        zs = [d.z.to(self.device) for d in latents.draws[:n_fixed]]
        features, draws = self.model.top_down(
            batch=rows, zs=zs + [None] * (len(self.layers) - n_fixed),
            noise=self.noise(rows, 1, generator),
            temperature=per_layer_temperatures(temperature, len(self.layers)))
        return LatentPass([_layer_draw(d) for d in draws], 1, {"features": features})


def _layer_draw(draw: dict) -> LayerDraw:
    layer = LayerDraw(p_mean=draw["p_mean"], p_logstd=draw["p_logstd"], z=draw["z"])
    if "q_mean" in draw:
        layer.q_mean, layer.q_logstd = draw["q_mean"], draw["q_logstd"]
        layer.kl = gaussian_kl(draw["q_mean"], draw["q_logstd"], draw["p_mean"],
                               draw["p_logstd"])
    return layer




# ---- loading -----------------------------------------------------------------------------------

def open_vdvae(path: str | os.PathLike, *, hparams=None, ema: bool | None = None,
               device=None) -> VDVAEProbe:
    """Open an openai/vdvae checkpoint as a Probe.

    Parameters
    ----------
    path : str or Path
        A ``*-model-ema.th`` / ``*-model.th`` file, or a folder with one of them.
    hparams : str, dict or path, optional
        The model's hyperparameters: one of VDVAE's sets (``cifar10``, ``imagenet32``,
        ``imagenet64``, ``ffhq256``, ``ffhq1024``), a dict of its keys, or a JSON file of them.
        Default: the ``<prefix>-log.jsonl`` VDVAE writes next to the checkpoint.
    ema : bool, optional
        In a folder, the EMA weights (default) or the trained ones; with a file, a check.
    device : str or torch.device, optional
        CUDA when available, else CPU.

    Examples
    --------
    >>> probe = open_vdvae("saved_models/latest-model-ema.th", hparams="cifar10")  # doctest: +SKIP
    >>> probe.layers[0]  # doctest: +SKIP
    LayerInfo(name='z00_r1', resolution=(1, 1), channels=16, stage='primary')
    """
    checkpoint = find_checkpoint(path, ema)
    files = [checkpoint]
    if hparams is None:
        logged = log_hparams(checkpoint)
        if logged is None:
            raise ValueError(f"VDVAE checkpoints do not record their hyperparameters and no "
                             f"{LOG_SUFFIX} lies next to {checkpoint}: pass hparams= one of "
                             f"{sorted(NAMED_HPARAMS)}, a dict or a JSON file of VDVAE's keys "
                             f"(CLI: --option hparams=cifar10)")
        spec, log = logged
        files.append(log)
    else:
        spec = hparams
        if isinstance(hparams, (str, Path)) and str(hparams) not in NAMED_HPARAMS:
            files.append(Path(hparams))
    where = str(files[-1]) if hparams is None or len(files) > 1 else "hparams"
    config: VDVAEHparams = checked_hparams(spec, where)
    check_budget(config, where)
    model = VDVAE(config)
    state = read_state_dict(checkpoint)
    check_state_dict(model, state, checkpoint, hparams if hparams is not None else str(files[-1]))
    model.load_state_dict(state, strict=True)
    digests = {p.name: io.sha256_file(p) for p in files}
    source = dict(format="vdvae", checkpoint=str(checkpoint),
                  checkpoint_sha256=digests[checkpoint.name],
                  files_sha256=json.dumps(digests, sort_keys=True),
                  ema=int(checkpoint.name.endswith(EMA_SUFFIX)),
                  hparams=str(files[-1].name) if hparams is None else (
                      str(hparams) if isinstance(hparams, (str, Path)) else "dict"),
                  vdvae_hparams=json.dumps(config.to_dict(), sort_keys=True))
    return VDVAEProbe(model, device=device, source=source)


formats.register("vdvae", Format(
    "vaeprobe.adapters.vdvae:open_vdvae", sniff,
    "an openai/vdvae *-model-ema.th or *-model.th file, or a folder with one"))
