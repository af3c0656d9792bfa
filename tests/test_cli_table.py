"""The CLI's noun table (vaeprobe._cli_nouns): every analysis command is a row whose runner
binds the parsed flags to its function's parameters, so that what reaches the function is
exactly what the flags say, and what does not is written out here."""

import inspect

import pytest

# the smallest command line of each row
ARGV = {"rate": ["m", "--data", "d"], "iwae": ["m", "--data", "d"],
        "information": ["m", "--data", "d"], "samples": ["m"], "quality": ["m", "--reference", "r"],
        "spectrum": ["s"], "pca": ["d"]}
# each row's parameters that no flag sets: the model (opened from CHECKPOINT, or the spectrum's
# SOURCE), progress (off with no flag: bars go to stderr), and settings the command leaves at
# their defaults (iwae's max_memory: --max-memory limits the model's loading, vp.load's)
NOT_BOUND = {
    "rate": {"probe", "per_image", "strict_data", "progress"},
    "iwae": {"probe", "progress", "max_memory"},
    "information": {"source", "progress"},
    "samples": {"probe", "return_primary", "progress"},
    "quality": {"probe", "n_preview", "kid_subset_size", "kid_subsets", "n_diversity_pairs",
                "progress"},
    "spectrum": {"source", "n_preview", "progress"},
    "pca": {"ks", "n_spectrum_images", "window", "progress"},
}


def test_the_table_holds_every_analysis_command_in_order():
    from vaeprobe._cli_nouns import nouns
    from vaeprobe.cli import build_parser

    assert list(nouns) == list(ARGV)
    commands = [action for action in build_parser()._actions
                if action.__class__.__name__ == "_SubParsersAction"][0].choices
    assert list(commands) == ["data", *ARGV, "weights", "audit", "compress", "decompress",
                              "compare"]


@pytest.mark.parametrize("name", list(ARGV))
def test_every_row_binds_each_parameter_to_its_flag(name):
    from vaeprobe._cli_nouns import bound_arguments, nouns
    from vaeprobe.cli import build_parser

    args = build_parser().parse_args([name, *ARGV[name]])
    parameters = set(inspect.signature(nouns.get(name).function).parameters)
    bound = bound_arguments(args)
    assert set(bound) <= parameters, f"{name} binds {set(bound) - parameters}: no parameters"
    assert parameters - set(bound) == NOT_BOUND[name], name


def test_a_bound_flag_reaches_the_function_under_its_parameter_name():
    """--distortion is pca_baseline's spectrum_distortion; samples' plain -n is n_images."""
    from vaeprobe._cli_nouns import bound_arguments
    from vaeprobe.cli import build_parser

    parse = build_parser().parse_args
    assert bound_arguments(parse(["pca", "d", "--distortion", "3"]))["spectrum_distortion"] == 3
    bound = bound_arguments(parse(["samples", "m", "-n", "5", "--data", "x"]))
    assert (bound["n_images"], bound["data"]) == (5, "x")
    compare = bound_arguments(parse(["compare", "a", "b", "--data", "d", "--out", "o"]))
    assert (compare["sources"], compare["out"]) == (["a", "b"], "o")


def test_binding_a_name_the_function_lacks_is_refused():
    import argparse

    from vaeprobe._cli_args import ApiArguments

    def noun(probe, data, *, seed=0):
        return None

    api = ApiArguments(argparse.ArgumentParser(), noun)
    api.bind("data")
    with pytest.raises(KeyError, match=r"noun has no parameter 'dataa'; name one of \['probe'"):
        api.bind("dataa")
