"""README.md's generated or extracted parts, between `<!-- NAME:start -->` and
`<!-- NAME:end -->` markers, so that CI and the README cannot drift apart.

    python .ci/readme.py block pip-recipe      # print the recipe CI runs
    python .ci/readme.py matrix out/ci/matrix.md   # README's tested points

`block` prints the code inside the fenced block between the markers;
`matrix` replaces what is between the `ci-matrix` markers by the table
`.ci/run` wrote (and the date and commit it names).
"""

from __future__ import annotations

import pathlib
import re
import sys

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _span(text: str, name: str) -> tuple[int, int]:
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    if text.count(start) != 1 or text.count(end) != 1:
        raise SystemExit(f"README.md needs exactly one {start.strip()} ... {end}")
    i, j = text.index(start) + len(start), text.index(end)
    if j < i:
        raise SystemExit(f"README.md: {end} comes before {start.strip()}")
    return i, j


def block(text: str, name: str) -> str:
    """The code of the one fenced block between `name`'s markers."""
    i, j = _span(text, name)
    match = re.fullmatch(r"```[a-z]*\n(.*?)```\n", text[i:j], re.S)
    if match is None:
        raise SystemExit(f"README.md: between the {name} markers, one fenced block")
    return match.group(1)


def replace(text: str, name: str, new: str) -> str:
    """`text` with what is between `name`'s markers replaced by `new`."""
    i, j = _span(text, name)
    return text[:i] + new.rstrip("\n") + "\n" + text[j:]


def main(argv: list[str]) -> None:
    text = README.read_text()
    if argv[:1] == ["block"] and len(argv) == 2:
        sys.stdout.write(block(text, argv[1]))
    elif argv[:1] == ["matrix"] and len(argv) == 2:
        README.write_text(replace(text, "ci-matrix", pathlib.Path(argv[1]).read_text()))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
