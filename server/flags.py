"""Command-line flags and `PHOENIX_*` environment twins, generated from `ServerConfig`.

Each leaf field `name` of the config tree becomes the flag `--name-with-dashes` and the
variable `PHOENIX_NAME`; a flag given on the command line wins over its variable, which wins
over the field's default. `options_table()` renders the same facts as docs/options.md's table
(`python -m server.flags` prints it, `--update-docs` rewrites that copy; a test keeps it in
step).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from server.config import ServerConfig
from server.operations.doc_tables import ROOT, replace_table

ENV_PREFIX = "PHOENIX_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclasses.dataclass(frozen=True)
class Option:
    """One leaf setting: where it sits in the config tree and how it is parsed."""

    path: tuple[str, ...]  # field names from ServerConfig down to the leaf
    field: dataclasses.Field
    kind: type  # int, float, str, bool, Path or tuple (of ints)
    optional: bool  # None allowed (an empty value means None)

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def help(self) -> str:
        return self.field.metadata["help"]

    @property
    def unit(self) -> str:
        return self.field.metadata["unit"]

    @property
    def choices(self) -> tuple[str, ...]:
        return self.field.metadata["choices"]

    def parse(self, text: str) -> Any:
        """The typed value of a flag or variable; ValueError naming the option if malformed."""
        text = text.strip()
        if self.optional and text == "":
            return None
        try:
            if self.kind is bool:
                if text.lower() not in _TRUE + _FALSE:
                    raise ValueError(f"expected one of {_TRUE + _FALSE}")
                return text.lower() in _TRUE
            if self.kind is tuple:
                return tuple(int(x) for x in text.split(",") if x.strip())
            value = self.kind(text)
        except ValueError as e:
            raise ValueError(f"{self.flag} / {self.env}: bad value {text!r}: {e}") from None
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.flag} / {self.env}: {text!r} is not one of {self.choices}")
        return value

    def render(self, value: Any) -> str:
        """A value as it is written on the command line (empty for None)."""
        if value is None:
            return ""
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        return str(value)


def _kind(annotation: Any) -> tuple[type, bool]:
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [a for a in args if a is not type(None)]
        return _kind(inner)[0], True
    if typing.get_origin(annotation) is tuple:
        return tuple, False
    if annotation in (int, float, str, bool, Path):
        return annotation, False
    raise TypeError(f"no flag type for {annotation!r}")


def options(cls: type = ServerConfig, path: tuple[str, ...] = ()) -> Iterator[Option]:
    """Every leaf setting of a config dataclass, depth first, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from options(hints[f.name], (*path, f.name))
        else:
            kind, optional = _kind(hints[f.name])
            yield Option((*path, f.name), f, kind, optional)


def add_flags(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> None:
    """Add one flag per option; defaults come from the environment, else the config."""
    env = os.environ if env is None else env
    for opt in options():
        default = opt.field.default
        if opt.env in env:
            default = opt.parse(env[opt.env])
        unit = f" [{opt.unit}]" if opt.unit else ""
        # A bare boolean flag (--log-json) means true; it also takes a value (--log-json 0).
        extra = {"nargs": "?", "const": True} if opt.kind is bool else {}
        parser.add_argument(
            opt.flag,
            **extra,
            dest=opt.name,
            type=opt.parse,
            default=default,
            metavar=opt.name.upper() if not opt.choices else "{" + ",".join(opt.choices) + "}",
            help=f"{opt.help}{unit} (default: {opt.render(default) or 'empty'}; {opt.env})",
        )
        if opt.kind is bool:  # and its negation: --no-reflection
            parser.add_argument(
                "--no-" + opt.flag[2:], dest=opt.name, action="store_false", help=argparse.SUPPRESS
            )


def config_from_args(args: argparse.Namespace, cls: type = ServerConfig) -> Any:
    """Build the nested config from parsed flags (see `add_flags`)."""
    return _build(cls, vars(args))


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        kwargs[f.name] = (
            _build(hints[f.name], values)
            if dataclasses.is_dataclass(hints[f.name])
            else values[f.name]
        )
    return cls(**kwargs)


def options_table() -> str:
    """The table of serve options in docs/options.md (markdown)."""
    lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for opt in options():
        default = opt.render(opt.field.default) or "empty"
        unit = f" {opt.unit}" if opt.unit and opt.field.default is not None else ""
        flag = f"`{opt.flag}`, `--no-{opt.flag[2:]}`" if opt.kind is bool else f"`{opt.flag}`"
        lines.append(f"| {flag} | `{opt.env}` | {default}{unit} | {opt.help} |")
    return "\n".join(lines)


OPTIONS_DOC = ROOT / "docs" / "options.md"


def update_docs(path: Path = OPTIONS_DOC) -> bool:
    """Replace the options table in `path` with the generated one; True if it changed."""
    return replace_table(path, options_table())


if __name__ == "__main__":
    if "--update-docs" in sys.argv:
        print(f"{OPTIONS_DOC}: {'updated' if update_docs() else 'already current'}")
    else:
        print(options_table())
