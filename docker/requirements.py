"""Prints the project's runtime requirements from pyproject.toml, one a line, for the image builds:
`requirements.py pyproject.toml --exclude llama-cpp-python` (the services that do not run models) or
`--only llama-cpp-python` (its pinned version, for the runner's build stage)."""

import argparse
import re
import tomllib


def name_of(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pyproject")
    parser.add_argument("--exclude", action="append", default=[], help="a distribution name to leave out")
    parser.add_argument("--only", action="append", default=[], help="print only this distribution")
    args = parser.parse_args()
    with open(args.pyproject, "rb") as f:
        requirements = tomllib.load(f)["project"]["dependencies"]
    for req in requirements:
        name = name_of(req)
        if name in args.exclude or (args.only and name not in args.only):
            continue
        print(req)


if __name__ == "__main__":
    main()
