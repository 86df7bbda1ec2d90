"""Print pyproject.toml's dependencies one per line, optionally only or all but some names.

The GPU images install torch in a layer of its own, before the rest, so that changing any
other dependency does not download torch again.
"""

import argparse
import re
import tomllib
from pathlib import Path


def name_of(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--only", default="", help="comma-separated names to keep")
    group.add_argument("--except", dest="exclude", default="", help="comma-separated names to drop")
    args = parser.parse_args()
    requirements = tomllib.loads(args.pyproject.read_text())["project"]["dependencies"]
    only = {name for name in args.only.split(",") if name}
    exclude = {name for name in args.exclude.split(",") if name}
    for requirement in requirements:
        name = name_of(requirement)
        if (only and name not in only) or name in exclude:
            continue
        print(requirement)


if __name__ == "__main__":
    main()
