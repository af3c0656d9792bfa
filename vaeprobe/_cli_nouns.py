"""The CLI's model commands, generated from a table: one :class:`Noun` row per command (the
public function, its summary printer, its plot), added to the parser by :func:`add_nouns`.

A row's command takes CHECKPOINT, ``--data``, ``--n-images``, ``--batch-size``, ``--seed``,
the loading flags, ``--out`` / ``--plot`` and the flags its ``flags`` adds; every flag takes its
default from the function's signature (:class:`~vaeprobe._cli_args.ApiArguments`), and the
runner (:func:`run_noun`) binds the parsed flags back to the function's parameters, so that a
flag cannot be forgotten on the way. A new noun is its function (one file) plus one row
registered here (``nouns.register("name", Noun(...))``), plus its test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vaeprobe._cli_args import ApiArguments, finish, load_probe, model_command
from vaeprobe.information import information
from vaeprobe.io import parameters
from vaeprobe.likelihood import iwae
from vaeprobe.probe import POSTERIORS
from vaeprobe.rate import rate
from vaeprobe.registry import Registry


@dataclass(frozen=True)
class Noun:
    """One model command: ``function(probe, data, **flags) -> Dataset``, the text printed from
    its Dataset, and the ``vaeprobe.plot`` function that draws ``--plot`` ("" for none)."""

    function: Callable
    help: str  # one line, in `vaeprobe --help`
    example: str  # a full command line
    printer: Callable  # Dataset -> the summary printed on stdout
    plot: str = ""  # name of the vaeprobe.plot function for --plot
    flags: Callable[[ApiArguments], None] = lambda api: None  # its own flags (api.add(...))


def _check_noun(name: str, noun) -> None:
    if not isinstance(noun, Noun):
        raise TypeError(f"CLI command {name!r} must be registered as a Noun(function, help, "
                        f"example, printer, plot, flags), got {type(noun).__name__}")


nouns = Registry("CLI command", check=_check_noun)


def bound_arguments(args) -> dict:
    """The keyword arguments of the command's own function from the parsed flags: every flag
    :class:`ApiArguments` added for a parameter of that function (the loading flags, of
    :func:`vaeprobe.load`, are :func:`load_probe`'s)."""
    return {param: getattr(args, dest) for dest, (of, param) in args.api_renames.items()
            if of == ""}


def run_noun(args) -> int:
    """Open the model, call the noun with its bound flags, print its summary, then write
    ``--out`` / ``--plot``."""
    import vaeprobe.plot

    noun = nouns.get(args.command)
    ds = noun.function(load_probe(args), args.data, **bound_arguments(args))
    print(noun.printer(ds))
    return finish(ds, args, getattr(vaeprobe.plot, noun.plot) if noun.plot else None)


def add_nouns(sub) -> None:
    """A subcommand per registered noun, in the order they were registered."""
    for name in nouns:
        noun = nouns.get(name)
        parser, api = model_command(sub, name, noun.function, noun.help, noun.example)
        noun.flags(api)
        parser.set_defaults(run=run_noun)


# ---- the table ------------------------------------------------------------------------------
def _rate_flags(api: ApiArguments) -> None:
    api.add("--active-threshold", type=float, units="nats", help="a channel is an active unit "
            "when its mean KL exceeds this")
    api.add("--posterior", choices=POSTERIORS, help="the distortion decodes a posterior sample "
            "or the posterior mean")


def _rate_summary(ds) -> str:
    return "\n".join([
        ds[["rate", "rate_fraction"]].to_dataframe().to_string(float_format="%.3f"),
        ds["rate_by_resolution"].to_series().to_string(float_format="%.3f"),
        f"total rate {float(ds.total_rate):.2f} ± {float(ds.total_rate_se):.2f} nats, "
        f"distortion {float(ds.distortion):.3f}, active units {int(ds.active_units)}"])


def _iwae_flags(api: ApiArguments) -> None:
    api.add("-k", type=int, units="draws", help="importance samples per image (K)")
    api.add("--chunk", type=int, help="draws per image per pass (memory only: results do not "
            "depend on it)")
    api.add("--kind", choices=("discretized", "dequantized"), help="how log p(x|z) is "
            "evaluated: a PMF over the 256 levels, or a density on dequantized data (+8 "
            "bits/dim)")


def _iwae_summary(ds) -> str:
    k = parameters(ds)["k"]
    return (f"IWAE (K={k}) {float(ds.bpd_mean):.4f} ± {float(ds.bpd_se):.4f} bits/dim; "
            f"ELBO {float(ds.elbo_bpd_mean):.4f} ± {float(ds.elbo_bpd_se):.4f}; mean ESS "
            f"{float(ds.ess.mean()):.1f} of {k} ({ds.attrs['likelihood_kind']}, "
            f"{ds.attrs['n_images']} images)")


nouns.register("rate", Noun(
    rate, "rate (KL in nats per image) per latent layer, resolution and channel; active units",
    "vaeprobe rate runs/demo --data patches32:test --out rate.nc --plot rate.png",
    _rate_summary, "rate", _rate_flags))
nouns.register("iwae", Noun(
    iwae, "importance-weighted bound on log p(x), in bits/dim",
    "vaeprobe iwae runs/demo -k 1000 --data patches32:test --n-images 200 --plot iwae.png",
    _iwae_summary, "iwae_convergence", _iwae_flags))


def _information_summary(ds) -> str:
    lines = [f"{'layer':<24} {'rate':>10} {'I(x;z_l|z<l)':>13} {'marginal KL':>12}  [nats]"]
    for index in range(ds.sizes["layer"]):
        row = ds.isel(layer=index)
        lines.append(f"{str(row['name'].values):<24} {float(row.rate):>10.3f} "
                     f"{float(row.mutual_information):>13.3f} {float(row.marginal_kl):>12.3f}")
    lines.append(
        f"rate {float(ds.total_rate):.3f} (analytic; of the draws "
        f"{float(ds.rate_sampled.sum()):.3f}) = I(x; z) "
        f"{float(ds.total_mutual_information):.3f} ± {float(ds.total_mutual_information_se):.3f}"
        f" + marginal KL {float(ds.total_marginal_kl):.3f} ± "
        f"{float(ds.total_marginal_kl_se):.3f} nats (log N ceiling "
        f"{float(ds.attrs['log_n_ceiling']):.3f}; identity holds: "
        f"{'yes' if int(ds.attrs['identity_holds']) else 'NO'})")
    if "total_correlation" in ds:
        lines.append(f"total correlation {float(ds.total_correlation):.3f}, dimension-wise KL "
                     f"{float(ds.dimension_wise_kl):.3f} nats")
    return "\n".join(lines)


nouns.register("information", Noun(
    information, "rate split into I(x; z) and the marginal KL KL(q(z) || p(z)) per layer "
    "(one-layer models: total correlation, dimension-wise KL)",
    "vaeprobe information runs/demo --data patches32:test --n-images 500 --plot info.png",
    _information_summary, "information"))
