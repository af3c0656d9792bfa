"""Sphinx extension: the reference pages generated from the code, so that they cannot drift.

At ``builder-inited`` it writes ``docs/generated/`` (not committed):

- ``api/<name>.rst``: one page per public name: every name in ``vaeprobe.__all__`` and every
  name in the ``__all__`` of the public modules among them (``vp.plot``, ``vp.data``, ...);
  ``api_index.rst``: their tables (first docstring line of each);
- ``cli.rst``: ``vaeprobe``'s argument parser, one section per command (and the trainer's);
- ``training.rst``: the trainer's presets and flags from ``trainers.config`` (TrainConfig
  fields, their help and defaults; the model presets from ``vaeprobe.models``);
- ``formats.rst``: the checkpoint-format registry (files, sniffing rule, options, quirks);
- ``sections.rst``: the audit-section registry (protocol, options, variables, units).

A format or a section registered in the library adds its entry with no edit here. It also
resolves references to vaeprobe objects by identity: ``vaeprobe.rate.rate`` links to the page
of ``vaeprobe.rate`` (the same function). A reference to a vaeprobe name that exists but has no
page (a private helper) renders as code; one to a name that does not exist stays a warning, so
``-W`` fails the build on a broken reference.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import textwrap
from pathlib import Path

from docutils import nodes
from sphinx.util import logging

LOG = logging.getLogger(__name__)
PAGES: dict[int, str] = {}  # id(object) -> documented public name
HOMES: dict[str, str] = {}  # docname of an API page -> the module that defines its object


# ------------------------------------------------------------------ helpers

def _first_line(obj) -> str:
    """The docstring's first paragraph, its cross-references as code (a table has no module
    context to resolve them in; the object's page links them)."""
    doc = inspect.getdoc(obj) or ""
    line = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
    line = re.sub(r":[\w:]+:`~?([^`<]*?)(?: <[^>]*>)?`", lambda m: f"``{m.group(1)}``", line)
    return line.replace("|", "\\|")


def _title(text: str, char: str = "=") -> str:
    return f"{text}\n{char * len(text)}\n"


def _write(path: Path, text: str) -> None:
    """Write only on change, so that Sphinx rebuilds only what changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _indent(text: str, spaces: int = 3) -> str:
    return textwrap.indent(text, " " * spaces)


def _literal(text: str) -> str:
    return ".. code-block:: text\n\n" + _indent(text.rstrip() or "(none)") + "\n"


def _escape(text) -> str:
    return str(text).replace("*", "\\*").replace("`", "\\`").replace("|", "\\|")


# ------------------------------------------------------------------ API pages

def public_names() -> dict[str, list[str]]:
    """Module name -> its public names (vaeprobe first, then its public modules)."""
    import vaeprobe

    table = {"vaeprobe": list(vaeprobe.__all__)}
    for name in vaeprobe.__all__:
        obj = getattr(vaeprobe, name)
        if inspect.ismodule(obj):
            table[obj.__name__] = list(getattr(obj, "__all__", None) or _defined_in(obj))
    return table


def _defined_in(module) -> list[str]:
    """Public functions and classes defined in a module without ``__all__``."""
    return [name for name, obj in vars(module).items() if not name.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == module.__name__]


def _directive(full: str, obj) -> str:
    if inspect.ismodule(obj):
        return f".. automodule:: {full}\n   :no-members:\n"
    if inspect.isclass(obj):
        options = "" if issubclass(obj, BaseException) else "   :members:\n   :undoc-members:\n"
        return f".. autoclass:: {full}\n{options}"
    if callable(obj):
        return f".. autofunction:: {full}\n"
    return f".. autodata:: {full}\n   :no-value:\n"


def api_pages(out: Path) -> None:
    tables = []
    for module_name, names in public_names().items():
        module = importlib.import_module(module_name)
        if module_name == "vaeprobe":
            tables.append(_title("The top-level API (``import vaeprobe as vp``)", "-"))
        else:
            short = module_name.replace("vaeprobe.", "vp.")
            tables.append(_title(f"``{short}``: {_first_line(module)}", "-"))
        rows = []
        for name in names:
            obj = getattr(module, name)
            full = f"{module_name}.{name}"
            PAGES.setdefault(id(obj), full)
            HOMES[f"generated/api/{full}"] = getattr(obj, "__module__", None) or module_name
            heading = full.replace("vaeprobe.", "vp.", 1)
            body = _title(heading) + "\n" + _directive(full, obj)
            if inspect.ismodule(obj):
                body += f"\nIts public names are listed in :ref:`api-{obj.__name__}`.\n"
            _write(out / "api" / f"{full}.rst", body)
            role = "mod" if inspect.ismodule(obj) else "obj"
            rows.append(f"   * - :py:{role}:`{heading} <{full}>`\n     - {_first_line(obj) or ' '}")
        label = f".. _api-{module_name}:\n\n"
        tables[-1] = label + tables[-1]
        tables.append(f".. currentmodule:: {module_name}\n\n.. list-table::\n"
                      "   :widths: 30 70\n\n" + "\n".join(rows) + "\n")
        tables.append(".. toctree::\n   :hidden:\n\n" + "\n".join(
            f"   /generated/api/{module_name}.{name}" for name in names) + "\n")
    _write(out / "api_index.rst", "\n".join(tables))


# ------------------------------------------------------------------ command lines

def _actions(parser: argparse.ArgumentParser) -> str:
    rows = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        flags = ", ".join(action.option_strings) or action.dest
        if action.option_strings and action.nargs != 0:
            flags += f" {action.metavar or action.dest.upper()}"
        help_text = (action.help or "") % {"default": action.default, "prog": parser.prog} \
            if action.help and "%(" in action.help else (action.help or "")
        if action.choices and not isinstance(action.choices, dict):
            help_text += f" (choices: {', '.join(map(str, action.choices))})"
        if action.default not in (None, argparse.SUPPRESS, False) and \
                "default" not in help_text:
            help_text += f" (default: {action.default})"
        rows.append(f"   * - ``{flags}``\n     - {_escape(help_text) or ' '}")
    if not rows:
        return ""
    return ".. list-table::\n   :widths: 30 70\n   :header-rows: 1\n\n" \
        "   * - argument\n     - meaning\n" + "\n".join(rows) + "\n"


def _parser_section(parser: argparse.ArgumentParser, char: str) -> str:
    text = _title(f"``{parser.prog}``", char) + "\n"
    text += _literal(parser.format_usage().replace("usage: ", "", 1)) + "\n"
    if parser.description:
        text += _escape(parser.description) + "\n\n"
    text += _actions(parser) + "\n"
    if parser.epilog:
        text += _literal(parser.epilog) + "\n"
    return text


def cli_page(out: Path) -> None:
    from trainers.config import parser as train_parser
    from vaeprobe.cli import build_parser

    root = build_parser()
    text = _title("Command line") + "\n"
    text += ("Generated from ``vaeprobe.cli.build_parser()`` and ``trainers.config.parser()``: "
             "each section is what ``--help`` prints, as a table.\n\n")
    text += _parser_section(root, "-")
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                section = _parser_section(sub, "~")
                if helps.get(name) and not sub.description:
                    section = section.replace("\n\n", f"\n\n{_escape(helps[name])}\n\n", 2)
                text += f".. _cli-{name}:\n\n" + section
    text += ".. _cli-train:\n\n" + _title("The trainer", "-") + "\n"
    text += "See :doc:`/reference/training` for the presets.\n\n"
    text += _parser_section(train_parser(), "~")
    _write(out / "cli.rst", text)


# ------------------------------------------------------------------ trainer presets and flags

def training_page(out: Path) -> None:
    import dataclasses

    from trainers.config import PRESETS, TrainConfig
    from vaeprobe.models import PRESETS as MODEL_PRESETS

    text = _title("Trainer presets and flags") + "\n"
    text += ("Generated from ``trainers.config`` (``TrainConfig`` and ``PRESETS``) and "
             "``vaeprobe.models.PRESETS``. Every field is a flag of ``python -m trainers.train`` "
             "(``--field-name``); a preset sets the fields in its row unless a flag is given.\n\n")
    text += _title("Training presets", "-") + "\n"
    keys = sorted({key for values in PRESETS.values() for key in values})
    text += ".. list-table::\n   :header-rows: 1\n\n   * - preset\n" + "".join(
        f"     - ``{key}``\n" for key in keys)
    for name, values in PRESETS.items():
        text += f"   * - ``{name}``\n" + "".join(
            f"     - {values.get(key, '(flag default)')}\n" for key in keys)
    text += "\n" + _title("Model presets", "-") + "\n"
    for name, config in MODEL_PRESETS.items():
        fields = ", ".join(f"``{key}={value!r}``" for key, value in
                           dataclasses.asdict(config).items())
        text += f"``{name}``\n   {fields}\n\n"
    text += _title("Flags", "-") + "\n"
    text += ".. list-table::\n   :widths: 20 15 65\n   :header-rows: 1\n\n" \
            "   * - flag\n     - default\n     - meaning\n"
    for item in dataclasses.fields(TrainConfig):
        text += (f"   * - ``--{item.name.replace('_', '-')}``\n     - ``{item.default!r}``\n"
                 f"     - {_escape(item.metadata.get('help', ''))}\n")
    _write(out / "training.rst", text + "\n")


# ------------------------------------------------------------------ formats and sections

def _source_name(function) -> str:
    module = getattr(function, "__module__", "")
    return f"``{module}.{getattr(function, '__qualname__', repr(function))}``"


def _numpydoc(function) -> dict:
    """The parsed numpydoc sections of a function's docstring."""
    from numpydoc.docscrape import NumpyDocString

    return NumpyDocString(inspect.getdoc(function) or "")


def formats_page(out: Path) -> None:
    import dataclasses

    from vaeprobe.adapters import formats

    text = _title("Checkpoint formats") + "\n"
    text += ("Generated from the registry ``vaeprobe.adapters.formats``: ``vp.load(path)`` "
             "asks every format's sniffing rule and opens the one format that recognises the "
             "files (``format=`` chooses one). A format registered there gets its section "
             "here.\n\n")
    for name in formats.names():
        entry = formats.get(name)
        opener = entry.open_function()
        text += f".. _format-{name}:\n\n" + _title(f"``{name}``", "-") + "\n"
        text += f"**Files.** {_escape(entry.files)}\n\n"
        sniff_doc = _first_line(entry.sniff)
        text += f"**Sniffing rule.** {_source_name(entry.sniff)}" + \
            (f": {sniff_doc}" if sniff_doc else "") + "\n\n"
        names, required = entry.options()
        parsed = _numpydoc(opener)
        described = {item.name: item for item in parsed["Parameters"]}
        for item in parsed["Parameters"]:  # "format, options : ..." documents two at once
            for part in item.name.split(","):
                described.setdefault(part.strip(), item)
        module = opener.__module__
        text += f".. currentmodule:: {module}\n\n"
        summary = " ".join(parsed["Summary"])
        text += f"**Opened by** ``{entry.opener}``: {summary}\n\n"
        for paragraph in (*parsed["Extended Summary"], *parsed["Notes"]):
            text += paragraph + "\n"
        text += "\n"
        parameters = inspect.signature(opener).parameters
        if names:
            text += "**Options** (``vp.load(path, format=..., KEY=VALUE)``, CLI " \
                    "``--option KEY=VALUE``):\n\n"
            for option in names:
                default = parameters[option].default
                shown = "required" if option in required else f"default ``{default!r}``"
                item = described.get(option)
                kind = f" ({_escape(item.type)})" if item is not None and item.type else ""
                meaning = " ".join(item.desc) if item is not None else ""
                text += f"- ``{option}``{kind}, {shown}" + (f": {meaning}" if meaning else "")
                text += "\n"
            text += "\n"
        else:
            text += "**Options.** none\n\n"
        for extra in dataclasses.fields(entry):  # what the registry adds later is shown too
            if extra.name not in ("opener", "sniff", "files"):
                value = getattr(entry, extra.name)
                if value not in (None, "", (), [], {}):
                    text += f"**{extra.name.replace('_', ' ').capitalize()}.** " \
                            f"{_escape(value)}\n\n"
    _write(out / "formats.rst", text)


def sections_page(out: Path) -> None:
    import dataclasses

    from vaeprobe.audit.registry import sections, titles

    text = _title("Audit sections") + "\n"
    text += ("Generated from the registry ``vaeprobe.audit.registry``: ``vp.audit`` runs the "
             "default sections in this order (``sections=`` / ``--sections`` names others). "
             "Each section below gives its protocol (its module's docstring), its options and "
             "their defaults, and the variables it stores with their units and dims (read "
             "from the section's Dataset in a real audit of the tiny test model, when the "
             "build could run one).\n\n")
    numbered = titles()
    variables = _section_variables()
    skip = {"name", "title", "summary", "accumulator", "compute", "core", "cost", "check"}
    for name, section in sections().items():
        text += f".. _section-{name}:\n\n" + _title(numbered[name], "-") + "\n"
        text += f"Key ``{name}`` (in ``audit.nc``, ``settings`` and ``--sections``); "
        text += "run by default.\n\n" if section.default else "opt-in (name it to run it).\n\n"
        for item in dataclasses.fields(section):
            value = getattr(section, item.name)
            if item.name in skip or value in (None, "", (), {}) or item.name == "default":
                continue
            if callable(value):  # e.g. an image limit that depends on the model
                text += f"- **{item.name.replace('_', ' ')}**: {_first_line(value)}\n"
                continue
            text += f"- **{item.name.replace('_', ' ')}**: ``{value!r}``\n"
        how = "from the shared pass" if section.shared else "by its own work"
        text += f"- **computed** {how}\n\n"
        module = inspect.getmodule(section.accumulator or section.compute)
        text += "**Protocol** (the docstring of ``" + module.__name__ + "``):\n\n"
        text += f".. currentmodule:: {module.__name__}\n\n"
        text += ".. rst-class:: section-protocol\n\n" + _indent(
            (inspect.getdoc(module) or "(none)").replace("\n\n", "\n\n")) + "\n\n"
        if name in variables:
            text += "**Variables** (a tiny-8 audit on digits8; sizes depend on the model):\n\n"
            text += variables[name] + "\n"
    _write(out / "sections.rst", text)


def _section_variables() -> dict[str, str]:
    """Variables, units and dims of each section, from an audit of the tiny test fixture."""
    from vaeprobe import audit as audit_module  # noqa: F401  (registers the sections)
    from vaeprobe.audit.registry import sections

    fixture = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny8_trained"
    if not fixture.exists():
        return {}
    import vaeprobe as vp

    result = {}
    try:
        report = _tiny_audit(vp, fixture, list(sections()))
    except Exception as error:  # the page still builds, saying why the tables are missing
        LOG.info(f"vaeprobe_docs: no variables table: the tiny audit failed ({error})")
        return {}
    for name, ds in report.items():
        rows = []
        for var in ds.data_vars:
            attrs = ds[var].attrs
            meaning = _escape(attrs.get("long_name", attrs.get("description", "")))
            rows.append(f"   * - ``{var}``\n     - {_escape(attrs.get('units', '')) or ' '}\n"
                        f"     - {', '.join(ds[var].dims) or '(scalar)'}\n"
                        f"     - {meaning or ' '}")
        if rows:
            result[name] = (".. list-table::\n   :widths: 25 15 20 40\n   :header-rows: 1\n\n"
                            "   * - variable\n     - units\n     - dims\n     - meaning\n"
                            + "\n".join(rows) + "\n")
    return result


def _tiny_audit(vp, fixture: Path, names: list[str]) -> dict:
    """Every section on 16 digits8 images (stand-in networks: the variables, not the values,
    are what the page shows); about 20 s on one core."""
    report = vp.audit(str(fixture), "digits8:test", n_images=16, sections=names, quick=True,
                      feature_extractor="random-convnet-TEST-ONLY", lpips_trunk="random-TEST-ONLY",
                      progress=False, settings={"likelihood": {"k": 4}}, device="cpu")
    return {name: ds for name, ds in report.items() if ds.attrs.get("status") == "ok"}


# ------------------------------------------------------------------ references by identity

def _resolve_object(target: str):
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            return None, False
        return obj, True
    return None, False


def missing_reference(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    candidates = [target]
    if not target.startswith("vaeprobe"):  # relative to the module / class it is written in
        contexts = [node.get("py:module"), HOMES.get(node.get("refdoc"))]
        for context in filter(None, contexts):
            if node.get("py:class"):
                candidates.append(f"{context}.{node['py:class']}.{target}")
            candidates.append(f"{context}.{target}")
    for candidate in candidates:
        if not candidate.startswith(("vaeprobe.", "trainers.", "analyses.")):
            continue
        obj, found = _resolve_object(candidate)
        if not found:
            continue
        public = PAGES.get(id(obj))
        if public and public != candidate:
            domain = env.get_domain("py")
            return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                       public, node, contnode) or \
                domain.resolve_xref(env, node["refdoc"], app.builder, "obj", public, node,
                                    contnode)
        if public is None:  # a real name with no page of its own: code, no link
            return nodes.literal(contnode.astext(), contnode.astext())
    return None


def generate(app) -> None:
    out = Path(app.srcdir) / "generated"
    api_pages(out)
    cli_page(out)
    training_page(out)
    formats_page(out)
    sections_page(out)


def _numpydoc_warnings_are_sphinx_warnings() -> None:
    """numpydoc reports an unknown or malformed section as a Python UserWarning, which ``-W``
    does not see; say it through Sphinx's logger instead, so that it fails the build."""
    import warnings

    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "numpydoc" in str(filename):
            LOG.warning(f"numpydoc could not parse a docstring: {message}")
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    warnings.filterwarnings("always", category=UserWarning, module=r"numpydoc\..*")


def setup(app):
    _numpydoc_warnings_are_sphinx_warnings()
    app.connect("builder-inited", generate)
    app.connect("missing-reference", missing_reference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
