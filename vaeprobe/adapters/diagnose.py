"""What a model file or folder that no format opens is missing, told from its tensor names.

:func:`vaeprobe.load` asks here when a path is not a vaeprobe checkpoint and no format's files
fit: a disentangling-vae or JointVAE ``model.pt`` whose ``specs.json`` is not beside it, or a
bare state dict (the weights of a module that only its own code can build), for which the
answer is :meth:`vaeprobe.Probe.from_module`. The weights are read safely (weights-only torch
files, safetensors key names); nothing is built.
"""

from __future__ import annotations

from pathlib import Path

from vaeprobe import io
from vaeprobe.adapters._common import SPECS, model_folder

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
# tensor names that only one research project's state dict has -> (project, its specs keys)
PROJECTS = (
    (("encoder.mu_logvar_gen.", "decoder.convT1."), "disentangling-vae",
     "model_type, img_size, latent_dim, rec_dist", "disvae"),
    (("img_to_features.", "fc_mean.", "features_to_img."), "JointVAE",
     "dataset, latent_spec", "jointvae"),
)
FROM_MODULE = (
    "    model = MyVAE(...)  # the class whose code saved it\n"
    "    model.load_state_dict(torch.load(PATH, weights_only=True))\n"
    "    probe = vp.Probe.from_module(model, image_shape=(C, H, W), encoder_output='tuple', "
    "scale='logvar', decoder_output='mean')\n"
    "with the conventions its code uses: encoder_output 'tuple' | 'halves' | 'interleaved', "
    "scale 'logvar' | 'logstd' | 'std', decoder_output 'mean' | 'probabilities' | 'logits', "
    "and likelihood 'bernoulli' | 'gaussian' (sigma=...) for a bound")


def weights_file(path: Path) -> Path | None:
    """``path`` itself, or the one weights file of a folder (None: none, or several)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        return None
    found = [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    return found[0] if len(found) == 1 else None


def tensor_names(path: Path) -> list[str] | None:
    """The tensor names of a state dict file; None when it is not one (a vaeprobe checkpoint
    with its header, a container of other things, or an unreadable file)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as file:
                return list(file.keys())
        payload = io.load_torch_file(path, "weights file")
    except Exception:  # unreadable here: the opener's own error says why
        return None
    if not isinstance(payload, dict) or "format" in payload or not payload:
        return None
    state = payload.get("state_dict", payload)
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        return None
    return [str(name) for name in state]


def missing_piece(path: Path) -> str | None:
    """A message naming what ``path`` lacks for vp.load, or None when it cannot tell."""
    weights = weights_file(path)
    names = tensor_names(weights) if weights is not None else None
    if names is None:
        return None
    folder = model_folder(weights)
    for prefixes, project, keys, format_name in PROJECTS:
        if any(name.startswith(prefixes) for name in names):
            return (f"{weights} holds a {project} state dict (tensor names such as "
                    f"{_first(names, prefixes)}), but {folder / SPECS} is missing: "
                    f"{project} saves {SPECS} ({keys}) beside model.pt, and vp.load needs both "
                    f"(format {format_name!r}). Copy the {SPECS} of the run that trained it "
                    f"into {folder}, then vp.load({str(folder)!r})")
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return (f"{weights} is a bare state dict ({len(names)} tensors: {shown}), not a vaeprobe "
            f"checkpoint (no format='vaeprobe-checkpoint' header), no {SPECS} beside it "
            f"(disvae, jointvae), "
            f"no model_config.json (pythae), no config.json (diffusers), not a TAESD "
            f"*_encoder.pth / *_decoder.pth pair, not a VDVAE *-model.th. Only the code that "
            f"saved it can build the network; build it and wrap it:\n"
            f"{FROM_MODULE.replace('PATH', repr(str(weights)))}")


def _first(names: list[str], prefixes: tuple[str, ...]) -> str:
    return ", ".join([n for n in names if n.startswith(prefixes)][:2])


__all__ = ["missing_piece", "tensor_names", "weights_file"]
