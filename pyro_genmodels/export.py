"""``python -m pyro_genmodels.export RUN_DIR NAME --evaluation FILE.json [--note TEXT]``:
copy a finished run to ``pretrained/NAME`` with its model card (see
:mod:`pyro_genmodels.pretrained`)."""

from __future__ import annotations

import argparse

from .pretrained import export_pretrained


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="copy a finished run to pretrained/NAME")
    parser.add_argument("run_dir")
    parser.add_argument("name")
    parser.add_argument("--evaluation", help="the run's evaluate --json output")
    parser.add_argument("--note", default="", help="a line for the card (machine, wall time)")
    args = parser.parse_args(argv)
    print(export_pretrained(args.run_dir, args.name, args.evaluation, args.note))


if __name__ == "__main__":
    main()
