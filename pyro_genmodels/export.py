"""``python -m pyro_genmodels.export RUN_DIR NAME --evaluation FILE.json [--note TEXT]
[--out DIR]``: copy a finished run to ``DIR/NAME`` (default: the current directory) with
its model card (see :mod:`pyro_genmodels.pretrained`); ``--out pyro_genmodels/checkpoints``
in the source tree ships it."""

from __future__ import annotations

import argparse

from .pretrained import export_pretrained


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="copy a finished run to DIR/NAME with a card")
    parser.add_argument("run_dir")
    parser.add_argument("name")
    parser.add_argument("--evaluation", help="the run's evaluate --json output")
    parser.add_argument("--note", default="", help="a line for the card (machine, wall time)")
    parser.add_argument("--out", default=".", help="the folder to write NAME/ in (default .)")
    args = parser.parse_args(argv)
    print(export_pretrained(args.run_dir, args.name, args.evaluation, args.note, args.out))


if __name__ == "__main__":
    main()
