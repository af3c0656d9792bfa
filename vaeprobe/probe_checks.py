"""Argument checks shared by the Probes: image sizes a model can take, sample counts, fixed
layers, temperatures. Errors name the argument and the fix. Re-exported by :mod:`vaeprobe.probe`."""

from __future__ import annotations


def nearest_multiples(size: int, multiple: int) -> tuple[int, ...]:
    """The multiples of ``multiple`` next to ``size`` (one when ``size`` is one)."""
    below = (size // multiple) * multiple
    return tuple(s for s in (below, below + multiple) if s >= multiple) if below != size \
        else (size,)


def check_image_size(height: int, width: int, multiple: int, model: str = "this model") -> None:
    """Refuse a size whose height or width is not divisible by ``multiple``, naming the nearest
    valid sizes and the fixes (crop, resize, or pad)."""
    if height % multiple == 0 and width % multiple == 0:
        return
    heights, widths = nearest_multiples(height, multiple), nearest_multiples(width, multiple)
    nearest = ", ".join(f"{h}x{w}" for h in heights for w in widths)
    raise ValueError(
        f"images of {height}x{width} (HxW) do not fit {model}: it takes heights and widths "
        f"divisible by {multiple} (its downsampling factor); nearest valid sizes: {nearest}. "
        f"Crop or resize the images, or open the model with pad='reflect' (--option "
        f"pad=reflect: pads them, and crops reconstructions back)")


def check_n_samples(n_samples: int) -> None:
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")


def check_n_fixed(n_fixed: int, n_layers: int) -> None:
    if isinstance(n_fixed, bool) or not isinstance(n_fixed, int) or not 0 <= n_fixed <= n_layers:
        raise ValueError(f"n_fixed (layers kept from the given latents) must be an integer in "
                         f"[0, {n_layers}], got {n_fixed!r}")


def per_layer_temperatures(temperature, n_layers: int) -> list[float]:
    """One temperature per latent layer, from one float or a sequence (checked)."""
    if isinstance(temperature, (int, float)):
        return [float(temperature)] * n_layers
    temperature = [float(t) for t in temperature]
    if len(temperature) != n_layers:
        raise ValueError(f"expected one temperature or {n_layers} (one per latent layer), "
                         f"got {len(temperature)}")
    return temperature
