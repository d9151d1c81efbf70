"""Command-line options generated from the typed config dataclasses.

Every field of a config dataclass becomes ``--field-name``: its annotation gives
the parser (``int``, ``float``, ``str``, ``bool`` as ``--x/--no-x``, ``X | None``,
``tuple[int, ...]`` as comma-separated values, ``Literal[...]`` as choices) and its
trailing ``# comment`` in the class body (nanoGPT style), or the ``#:`` lines above it
(Sphinx's attribute docs) for a longer one, gives the help. Options
default to "not given", so only what the user typed reaches the config, which is
then built once, by the dataclass, with its own validation.

Hand-written because argparse has no dataclass support and ``dataclasses`` drops
the comments that document each field.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal


def field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field in the class bodies of ``cls`` and its bases."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (a frozen or interactive class)
            continue
        by_line = {
            tok.start[0]: tok.string
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT
        }
        body = ast.parse(source).body[0].body
        for node in body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                above, line = [], node.lineno - 1
                while by_line.get(line, "").startswith("#:"):  # Sphinx's "#:" doc comments
                    above.insert(0, by_line[line][2:].strip())
                    line -= 1
                if above:
                    comments[node.target.id] = " ".join(above)
                elif node.end_lineno in by_line:
                    comments[node.target.id] = by_line[node.end_lineno].lstrip("#").strip()
    return comments


def _parse_tuple(item: type):
    def parse(text: str) -> tuple:
        try:
            values = tuple(item(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {item.__name__} values, got {text!r}"
            ) from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one value, got {text!r}")
        return values

    return parse


def _parser_for(annotation: Any) -> dict | None:
    """argparse keywords for a field's annotation; None for a type the CLI cannot express."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _parser_for(rest[0]) if len(rest) == 1 else None
    if origin is Literal:
        return {"type": type(args[0]), "choices": args}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": _parse_tuple(args[0]), "metavar": "A,B,..."}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float, str):
        return {"type": annotation}
    return None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(
    group,
    owners: dict[str, type],
    dest_prefix: str,
    skip: Iterable[str] = (),
    aliases: dict[str, Iterable[str]] | None = None,
    choices: dict[str, Iterable[str]] | None = None,
    only: Iterable[str] | None = None,
) -> list[str]:
    """Add ``--field`` options for the fields of the dataclasses in ``owners``.

    :param group: an ``argparse`` parser or argument group.
    :param owners: ``{label: dataclass}``; a field shared by several (``latent_dim``) becomes
        one option whose help names them, with each one's default.
    :param dest_prefix: prefix of the ``argparse`` destinations (see :func:`given`).
    :param skip: fields not offered on the command line.
    :param only: if given, offer only these fields (a group of the same dataclass's options).
    :param aliases: more option strings for a field, e.g. ``{"epochs": ["--max-epochs"]}``.
    :param choices: the valid values of a ``str`` field whose names live in a registry
        rather than in a ``Literal`` (``{"guide": list_families()}``), listed in the help.
    :returns: the field names added.
    """
    fields: dict[str, list[tuple[str, dataclasses.Field, Any]]] = {}
    helps: dict[str, str] = {}
    for label, cls in owners.items():
        hints = typing.get_type_hints(cls)
        comments = field_comments(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip or (only is not None and f.name not in only):
                continue
            if _parser_for(hints[f.name]) is None:
                continue
            fields.setdefault(f.name, []).append((label, f, hints[f.name]))
            helps.setdefault(f.name, comments.get(f.name, ""))
    for name, uses in fields.items():
        kinds = {repr(_parser_for(hint).get("choices")) + str(hint) for _, _, hint in uses}
        if len(kinds) > 1:
            raise TypeError(f"config field {name!r} has different types in {[u[0] for u in uses]}")
        defaults = sorted({_default_text(f) for _, f, _ in uses})
        if len(owners) > 1:
            where = ", ".join(label for label, _, _ in uses)
            default = defaults[0] if len(defaults) == 1 else "per model"
            suffix = f" [{where}; default {default}]"
        elif defaults[0] == "None" and "default" in helps[name]:
            suffix = ""  # the comment says what None means
        else:
            suffix = f" (default {defaults[0]})"
        kwargs = _parser_for(uses[0][2])
        if name in (choices or {}):
            kwargs["choices"] = tuple(choices[name])
        if "type" in kwargs and "choices" not in kwargs:
            kwargs.setdefault("metavar", name.upper())
        if defaults == ["required"] and len(owners) == 1:
            kwargs["required"] = True
            suffix = ""
        group.add_argument(
            _flag(name),
            *(aliases or {}).get(name, ()),
            dest=dest_prefix + name,
            default=argparse.SUPPRESS,
            help=(helps[name] + suffix).replace("%", "%%"),
            **kwargs,
        )
    return list(fields)


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def given(args: argparse.Namespace, dest_prefix: str) -> dict[str, Any]:
    """The options under ``dest_prefix`` that the user gave, by field name."""
    return {
        key[len(dest_prefix) :]: value
        for key, value in vars(args).items()
        if key.startswith(dest_prefix)
    }
