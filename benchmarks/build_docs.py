"""Copy every published results table (docs/results/<name>.md, written by the benchmarks) into
the docs pages that include it, between `<!-- results: NAME -->` and `<!-- /results -->`.

    python -m benchmarks.build_docs              # rewrite the pages
    python -m benchmarks.build_docs --CHECK=True # only say which pages are out of date (exit 2)

The suite runs the check, so a rerun benchmark whose table was not copied in fails it.
"""
import re
from pathlib import Path

from utils import files
from utils.cli import run_cli
from utils.config import resolve_constants
from utils.errors import UserError

DOCS = "docs"  # the folder of pages; its results/ holds the tables
CHECK = False  # True: change nothing, fail if a page is not what building it would give

BLOCK = re.compile(r"(<!-- results: ([\w.-]+) -->\n)(.*?)(<!-- /results -->)", re.S)


def built(page: str, results: Path) -> str:
    """The page with every results block replaced by its table."""
    def fill(match: re.Match) -> str:
        table = results / f"{match.group(2)}.md"
        if not table.is_file():
            raise UserError(f"a page includes results '{match.group(2)}' but {table} does not "
                            f"exist: run the benchmark that publishes it")
        return f"{match.group(1)}{table.read_text().strip()}\n{match.group(4)}"
    return BLOCK.sub(fill, page)


def main(argv=None) -> list[str]:
    """Build (or check) every page; returns the pages that changed (or would)."""
    const = resolve_constants(globals(), argv)
    docs = Path(const.DOCS)
    pages = sorted(p for p in docs.rglob("*.md") if p.parent.name != "results")
    changed = []
    for page in pages:
        text = page.read_text()
        new = built(text, docs / "results")
        if new != text:
            changed.append(str(page))
            if not const.CHECK:
                files.write_text(page, new)
    if const.CHECK and changed:
        raise UserError(f"out of date: {', '.join(changed)} (run python -m benchmarks.build_docs)")
    print(f"{len(pages)} pages, {len(changed)} {'stale' if const.CHECK else 'rewritten'}")
    return changed


if __name__ == "__main__":
    run_cli(main)
