"""The ``kdlib`` command: ``kdlib compress recipe.toml`` and ``kdlib sweep recipe.toml`` (also ``python -m kdlib``).

Both call :func:`kdlib.pipeline.run` / :func:`kdlib.pipeline.sweep`; ``--set table.key=value`` changes one setting
of the recipe (the value is read as TOML: ``--set prune.ratio=0.25``, ``--set data.name='"mnist"'`` or plain
``--set data.name=mnist``). A user's own model is given in the recipe as ``model = "package.module:factory"``,
imported from the current folder or the installed packages. A recipe that cannot run, or data or a checkpoint
that is not there, prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kdlib


def _value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _recipe(args: argparse.Namespace) -> Any:
    from kdlib.pipeline.recipe import read_toml, set_value

    raw = read_toml(args.recipe)
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"kdlib: --set needs table.key=value, got {item!r}")
        raw = set_value(raw, key.strip(), _value(text.strip()))
    return raw


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="kdlib", description="Knowledge distillation, pruning and quantization.")
    main.add_argument("--version", action="version", version=f"kdlib {kdlib.__version__}")
    commands = main.add_subparsers(dest="command", required=True)
    for name, text in (("compress", "run a compression pipeline: distill → prune → quantize → export → evaluate"),
                       ("sweep", "run a recipe's [sweep] grid over seeds and find the Pareto fronts")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("recipe", type=Path, help="a recipe file (TOML); see recipes/ in the repository")
        sub.add_argument("--out", type=Path, help="output folder (default: runs/<recipe name>)")
        sub.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                         help="change one setting of the recipe (repeatable)")
        sub.add_argument("--smoke", action="store_true", help="tiny data and budgets: check a recipe in seconds")
        sub.add_argument("--restart", action="store_true",
                         help="replace finished stages in the output folder that a different recipe wrote")
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from kdlib.pipeline import run, sweep

    sys.path.insert(0, str(Path.cwd()))  # so that "mymodels:build" finds ./mymodels.py, as python -m would
    out = args.out or Path("runs") / args.recipe.stem
    try:
        action = run if args.command == "compress" else sweep
        action(_recipe(args), out, smoke=args.smoke, restart=args.restart)
    except (ValueError, FileNotFoundError) as err:  # a RecipeError, a data set or checkpoint that is not there
        print(f"kdlib {args.command}: {err}", file=sys.stderr)
        return 2
    print(f"kdlib {args.command}: results in {out}/" + ("report.md" if args.command == "compress" else "sweep.json"))
    return 0
