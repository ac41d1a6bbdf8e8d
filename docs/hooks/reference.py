"""mkdocs hook: the reference pages' generated parts, built from the code at build time.

A page holds a marker such as `<!-- generated: cli -->`; this hook replaces it with markdown built from
the argparse parser (`cli`), the config dataclasses (`config`) or the SQLAlchemy tables (`store-schema`),
so the reference cannot drift from the code. Registered in mkdocs.yml under `hooks:`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import io
import os
import re
import sys
import tokenize
from collections.abc import Callable
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:  # document this checkout's code, not an installed copy
    sys.path.insert(0, str(SRC))

MARKER = re.compile(r"<!--\s*generated:\s*([a-z-]+)\s*-->")
HELP_WIDTH = 100


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace every `<!-- generated: NAME -->` marker of a page with its generated markdown."""
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: unknown generated section {name!r}; "
                             f"known: {', '.join(sorted(GENERATORS))}")
        return GENERATORS[name]()
    return MARKER.sub(replace, markdown)


# ---- the command line ------------------------------------------------------------------------------------

def get_parser() -> argparse.ArgumentParser:
    """The `wattscale` argument parser: `wattscale.cli.build_parser()` (a module today, a package later)."""
    cli = importlib.import_module("wattscale.cli")
    build = getattr(cli, "build_parser", None)
    if build is None:  # a cli/ package that keeps the parser in a submodule
        build = importlib.import_module("wattscale.cli.parser").build_parser
    return build()


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, list[str], str, argparse.ArgumentParser]]:
    """(name, aliases, one-line help, parser) of every sub-command, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: dict[int, tuple[str, list[str], str, argparse.ArgumentParser]] = {}
            for name, sub in action.choices.items():
                if id(sub) in seen:
                    seen[id(sub)][1].append(name)
                else:
                    seen[id(sub)] = (name, [], helps.get(name, ""), sub)
            return list(seen.values())
    raise ValueError("the wattscale parser has no sub-commands")


def _help_text(parser: argparse.ArgumentParser) -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)  # argparse wraps at $COLUMNS: a fixed width builds the same page
    try:
        return parser.format_help().rstrip()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def cli_markdown() -> str:
    parser = get_parser()
    commands = _subcommands(parser)
    out = ["| command | what it does |", "|---|---|"]
    for name, aliases, help_line, _ in commands:
        also = f" (also `{'`, `'.join(aliases)}`)" if aliases else ""
        out.append(f"| [`{name}`](#wattscale-{name}){also} | {help_line} |")
    out += ["", "## wattscale", "", "```text", _help_text(parser), "```", ""]
    for name, _aliases, _help, sub in commands:
        out += [f"## wattscale {name}", "", "```text", _help_text(sub), "```", ""]
    return "\n".join(out)


# ---- configuration -----------------------------------------------------------------------------------------

def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the `#` comment on that line."""
    found: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            found[tok.start[0]] = tok.string.lstrip("#").strip()
    return found


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment in the source: the one on the field's line, else the comment lines above it."""
    source = inspect.getsource(inspect.getmodule(cls))
    comments = _comments(source)
    lines = source.splitlines()
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    result: dict[str, str] = {}
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            line = item.lineno
            if line in comments and not lines[line - 1].lstrip().startswith("#"):
                result[item.target.id] = comments[line]
                continue
            above: list[str] = []
            previous = line - 1
            while previous in comments and lines[previous - 1].lstrip().startswith("#"):
                above.insert(0, comments[previous])
                previous -= 1
            if above:
                result[item.target.id] = " ".join(above)
    return result


# Settings whose `wattscale train` flag is not `--` + the key with dashes.
FLAG_DESTS = {("data", "source"): "data", ("data", "val_source"): "val_data", ("meter", "kinds"): "meters"}
MODEL_FLAGS = {"vocab_size"}  # the only ModelConfig fields with a flag (the model's name comes from --preset)


def _train_flags() -> dict[str, argparse.Action]:
    """dest -> the `wattscale train` option that sets it."""
    for name, _aliases, _help, sub in _subcommands(get_parser()):
        if name == "train":
            return {a.dest: a for a in sub._actions if a.option_strings}
    raise ValueError("the wattscale parser has no train command")


def _config_classes() -> list[tuple[str, type]]:
    from wattscale.config import RunConfig

    hints = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    module = inspect.getmodule(RunConfig)
    classes = []
    for section in ("model", "train", "data", "meter"):
        annotation = hints[section]
        cls = getattr(module, annotation) if isinstance(annotation, str) else annotation
        classes.append((section, cls))
    return classes


def _default(field: dataclasses.Field[Any], section: str) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "from the preset" if section == "model" else "required"
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value!r}`".replace("'", '"').replace("|", "\\|")


def _identity(field: dataclasses.Field[Any]) -> str:
    """The `run id` cell: whether the field is part of a run's identity (`wattscale.identity`)."""
    from wattscale.identity import is_identity

    if not is_identity(field):
        return "no"
    if "omit_at" in field.metadata:
        omit = field.metadata["omit_at"]
        return "yes, unless unset" if omit is None else f"yes, unless `{omit!r}`"
    if "identify" in field.metadata:
        return "yes (a local path as its content only)"
    return "yes"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("[", "\\[").replace("]", "\\]")


def config_markdown() -> str:
    flags = _train_flags()
    out: list[str] = []
    for section, cls in _config_classes():
        comments = field_comments(cls)
        doc = inspect.getdoc(cls) or ""
        out += [f"## `[{section}]`", "", doc.split("\n\n")[0].replace("\n", " "), "",
                "| key | type | default | flag | meaning | run id |", "|---|---|---|---|---|---|"]
        if section == "model":
            action = flags.get("preset")
            out.append(f"| `model.preset` | `str` | required | `--preset` | "
                       f"{_cell(action.help if action else 'a preset name')}; any key below overrides its value "
                       "| yes (its values) |")
        for field in dataclasses.fields(cls):
            dest = FLAG_DESTS.get((section, field.name), field.name)
            action = flags.get(dest) if section != "model" or field.name in MODEL_FLAGS else None
            flag = f"`{action.option_strings[-1]}`" if action else "—"
            meaning = field.metadata.get("doc") or comments.get(field.name) or (action.help if action else "") or ""
            kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
            out.append(f"| `{section}.{field.name}` | `{_cell(str(kind))}` | {_default(field, section)} | {flag} "
                       f"| {_cell(meaning) or '—'} | {_identity(field)} |")
        out.append("")
    return "\n".join(out + footprint_markdown())


def footprint_markdown() -> list[str]:
    """The experiment file's `[footprint]` table (`wattscale.footprint.FootprintSettings`): display-time inputs."""
    from wattscale.footprint import ENV_VARS, FootprintSettings

    comments = field_comments(FootprintSettings)
    doc = (inspect.getdoc(FootprintSettings) or "").split("\n\n")[0].replace("\n", " ")
    out = ["## `[footprint]`", "", f"{doc} Experiment files only; read when runs are shown (`runs`, `energy`, "
           "`analyze`, `report`, `plan`), never when they are trained, so no key is part of a run id. A flag wins over "
           "its environment variable, which wins over the file ([Carbon and cost](../guides/carbon-and-cost.md)).",
           "", "| key | type | default | flag | environment | meaning | run id |", "|---|---|---|---|---|---|---|"]
    for field in dataclasses.fields(FootprintSettings):
        key = "carbon_intensity" if field.name.startswith("carbon_intensity") else field.name
        flag = f"`--{key.replace('_', '-')}`" if key in ENV_VARS else "—"
        env = f"`{ENV_VARS[key]}`" if key in ENV_VARS else "—"
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        out.append(f"| `footprint.{field.name}` | `{_cell(str(kind))}` | {_default(field, 'footprint')} | {flag} | "
                   f"{env} | {_cell(comments.get(field.name, '')) or '—'} | no |")
    out.append("")
    return out


# ---- the store -----------------------------------------------------------------------------------------------

def store_markdown() -> str:
    schema = importlib.import_module("wattscale.store_schema")
    source = inspect.getsource(schema)
    comments = _comments(source)
    lines = source.splitlines()
    out: list[str] = [f"Schema version {getattr(schema, 'SCHEMA_VERSION', '?')}.", ""]
    for table in schema.metadata.sorted_tables:
        start = next(i for i, line in enumerate(lines) if re.search(rf'Table\(\s*$|Table\("{table.name}"', line)
                     and (f'"{table.name}"' in line or f'"{table.name}"' in lines[i + 1]))
        column_comments: dict[str, str] = {}
        for number in range(start + 1, len(lines) + 1):
            match = re.search(r'Column\("(\w+)"', lines[number - 1])
            if match and match.group(1) not in column_comments:
                column_comments[match.group(1)] = comments.get(number, "")
            if lines[number - 1].startswith(")"):
                break
        out += [f"## `{table.name}`", "", "| column | type | null | key | note |", "|---|---|---|---|---|"]
        for column in table.columns:
            key = "primary" if column.primary_key else ("foreign" if column.foreign_keys else "")
            if column.index and not key:
                key = "indexed"
            out.append(f"| `{column.name}` | `{column.type!r}` | {'yes' if column.nullable else 'no'} | {key} "
                       f"| {_cell(column_comments.get(column.name, ''))} |")
        out.append("")
    return "\n".join(out)


GENERATORS: dict[str, Callable[[], str]] = {
    "cli": cli_markdown,
    "config": config_markdown,
    "store-schema": store_markdown,
}
