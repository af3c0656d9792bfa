"""``vaeprobe information``, ``compress``, ``decompress`` and ``compare``: the subcommands of
:mod:`vaeprobe.cli` over :mod:`vaeprobe.information`, :mod:`vaeprobe.compress` and
:mod:`vaeprobe.compare`, their defaults read from the functions' signatures."""

from __future__ import annotations


def _cmd_information(args) -> int:
    import vaeprobe as vp
    from vaeprobe._cli_args import _finish, _load

    ds = vp.information(_load(args), args.data, n_images=args.n_images,
                        batch_size=args.batch_size, seed=args.seed)
    table = ds[["rate", "mutual_information", "marginal_kl"]].to_dataframe()
    print(table.drop(columns=[c for c in table.columns if c not in
                              ("name", "rate", "mutual_information", "marginal_kl")])
          .to_string(float_format="%.3f"))
    print(f"rate {float(ds.total_rate):.3f} = I(x; z) {float(ds.total_mutual_information):.3f}"
          f" ± {float(ds.total_mutual_information_se):.3f} + marginal KL "
          f"{float(ds.total_marginal_kl):.3f} ± {float(ds.total_marginal_kl_se):.3f} nats "
          f"(log N ceiling {float(ds.attrs['log_n_ceiling']):.3f}; identity holds: "
          f"{'yes' if int(ds.attrs['identity_holds']) else 'NO'})")
    if "total_correlation" in ds:
        print(f"total correlation {float(ds.total_correlation):.3f}, dimension-wise KL "
              f"{float(ds.dimension_wise_kl):.3f} nats")
    return _finish(ds, args, vp.plot.information)


def _add_information(sub) -> None:
    import vaeprobe as vp
    from vaeprobe._cli_args import _model_command

    parser, _ = _model_command(
        sub, "information", vp.information, "rate split into I(x; z) and the marginal KL "
        "KL(q(z) || p(z)) per layer (one-layer models: total correlation, dimension-wise KL)",
        "vaeprobe information runs/demo --data patches32:test --n-images 500 --plot info.png")
    parser.set_defaults(run=_cmd_information)
