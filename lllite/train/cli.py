"""``python -m lllite.train``: a run's settings from flags and a TOML file, each option's help read from
:class:`lllite.train.TrainConfig`'s docstring (one place documents it)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from ..errors import LLLiteError
from .config import TrainConfig, config_from_toml, field_type
from .loop import train

DESCRIPTION = "Train a ControlNet-LLLite network on a frozen SDXL or Anima (kohya's option names)."


def _option_help() -> dict[str, str]:
    """Each option's help, read from the ``Args:`` of :class:`TrainConfig` (one place to document it)."""
    helps: dict[str, str] = {}
    names: list[str] = []
    for line in TrainConfig.__doc__.split("Args:")[1].splitlines():
        text = line.strip()
        head, _, rest = text.partition(": ")
        if line.startswith(" " * 8) and not line.startswith(" " * 12) and rest:
            names = [n.strip() for n in head.split(",")]
            for name in names:
                helps[name] = rest
        elif text:
            for name in names:
                helps[name] += " " + text
    return helps


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m lllite.train", description=DESCRIPTION)
    parser.add_argument("--config", help="training TOML with any of the options below (flags override it)")
    helps = _option_help()
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        kind = field_type(f.name)
        flag = f"--{f.name}"
        help_text = f"{helps.get(f.name, '')} (default: {getattr(defaults, f.name)})".replace("%", "%%")
        if f.name == "resume":
            parser.add_argument(flag, nargs="?", const="latest", default=argparse.SUPPRESS,
                                help="continue from the latest checkpoint, or from the given checkpoint folder")
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=kind.__name__.upper(), help=help_text)
    args = vars(parser.parse_args(argv))
    toml = args.pop("config", None)
    settings = config_from_toml(toml) if toml else {}
    settings.update(args)
    return TrainConfig(**settings)


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
        result = train(config)
    except LLLiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.weights is not None:
        print(f"wrote {result.weights} after {result.steps} steps ({result.train_seconds:.0f} s of training)")
    return 0

