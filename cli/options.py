"""Command-line values: method flags generated from the methods' Options, and the parsers of sizes and lists."""

from __future__ import annotations

import click

from xai_graph.methods import option_fields
from xai_graph.methods.base import parse_top_k


def method_option_flags(command):
    """One flag per method option, made from the methods' `Options` dataclasses (`xai_graph.methods.option_fields`):
    its flag, help, choices and parser live with the method. Unset flags pass None, so a method only ever sees
    the options a user gave."""
    for item in reversed(option_fields()):
        meta = item.metadata
        default = "all" if item.name == "top_k" else item.default
        shown = default is not None and not isinstance(default, bool)
        settings = {
            "help": f"{meta['help']} [default: {default}]" if shown else meta["help"],
            "metavar": meta["metavar"],
            "default": None,
        }
        if isinstance(item.default, bool):
            settings.update(is_flag=True, default=False)
        elif meta["choices"]:
            settings["type"] = click.Choice(meta["choices"])
        if meta["parse"]:
            settings["callback"] = _parsed_by(meta["parse"])
        command = click.option(meta["flag"], item.name, **settings)(command)
    return command


def _parsed_by(parse):
    def callback(ctx, param, text):
        try:
            return None if text is None else parse(text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


def top_k_option(text: str) -> int | None:
    try:
        return parse_top_k(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--classes") from None


def ints_option(text: str | None, option: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected integers separated by commas", param_hint=option) from None


def _pair(text: str | None, option: str, form: str) -> tuple[int, int] | None:
    """'AxB' -> (A, B): WxH for --size, HxW for --map-size."""
    if not text:
        return None
    try:
        first, second = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected {form}, e.g. 224x224", param_hint=option) from None
    if first < 1 or second < 1:
        raise click.BadParameter(f"{text!r}: both sides must be at least 1 pixel", param_hint=option)
    return first, second


def size_option(text: str | None) -> tuple[int, int] | None:
    return _pair(text, "--size", "WxH")
