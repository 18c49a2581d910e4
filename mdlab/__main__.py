"""``python -m mdlab <command>``: the stages from a shell, and ``demo`` (all notebooks)."""

from __future__ import annotations

import argparse
import sys
import warnings


def _datasets(args) -> int:
    from mdlab import data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = data.summary()
    print(f"{'dataset':<18}{'split':<10}{'problems':>9}{'numeric':>9}  license")
    for row in rows:
        print(f"{row['dataset']:<18}{row['split']:<10}{row['problems']:>9}{row['numeric_answers']:>9}  {row['license']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mdlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("datasets", help="list every dataset split with its size and license")
    sub.add_parser("env", help="print versions and device")
    demo = sub.add_parser("demo", help="run notebooks 01-05 headless into runs/<profile>/")
    demo.add_argument("--profile", default="cpu")
    args = parser.parse_args(argv)
    if args.command == "datasets":
        return _datasets(args)
    if args.command == "env":
        import mdlab

        mdlab.env_report()
        return 0
    if args.command == "demo":
        import mdlab

        mdlab.env_report()
        return _datasets(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
