"""The front door and the book tell the truth: every `python -m` command shown parses (its
module exists and every --NAME=value is one of its constants, with a value the script accepts),
every linked image and page exists, the defaults a page states are the scripts' constants, and
every page holds the tables docs/results/ has for it (benchmarks.build_docs is a no-op)."""
import ast
import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from utils.config import constants_of, resolve_constants
from utils.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SCRIPTS = [p.stem for p in ROOT.glob("*_run_scripts/*.py") if p.stem != "__init__"]


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def commands(text: str) -> list[str]:
    """The `python -m` (or torchrun -m) commands of a page: inline code spans and code lines,
    continuation backslashes joined, split where a page chains several (;, &&, 'then')."""
    text = re.sub(r"\\\n\s*", " ", text)
    found = []
    pieces = re.findall(r"`([^`\n]*python -m [^`\n]*)`", text)
    pieces += [line for line in text.splitlines()
               if line.startswith(("    ", "\t")) and "-m " in line and "`" not in line]
    for piece in pieces:
        for part in re.split(r";|&&|, then | then ", piece):
            match = re.search(r"(?:python|torchrun[^-]*(?:--\S+\s+)*)\s*-m\s+(\S+)(.*)", part)
            if match and not match.group(1).startswith(("pytest", "pip", "<")) \
                    and "<" not in match.group(1):
                found.append(f"{match.group(1)}{match.group(2)}".strip())
    return found


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


ALL = [(page, command) for page in PAGES for command in commands(page.read_text())]


def test_the_pages_show_commands_and_the_reader_finds_them():
    assert len(ALL) > 40
    assert ("python -m GAN_run_scripts.ganmain" in (ROOT / "README.md").read_text())


@pytest.mark.parametrize("page, command", ALL, ids=[f"{_rel(p)}:{c[:60]}" for p, c in ALL])
def test_every_command_shown_parses(page, command):
    words = shlex.split(re.sub(r"\[(--[^\]]*)\]", r"\1", command))  # [--SEED=1]: optional
    module, args = words[0], [w for w in words[1:] if w.startswith("--")]
    assert _module_exists(module), f"{_rel(page)}: no module {module}"
    namespace = vars(importlib.import_module(module))
    known = constants_of(namespace)
    for arg in args:
        name = arg[2:].split("=", 1)[0]
        assert name in known, f"{_rel(page)}: {module} has no constant {name} ({command})"
    checkable = [a for a in args if "=" in a and "<" not in a and "..." not in a]
    try:
        resolve_constants(namespace, checkable)
    except UserError as err:
        pytest.fail(f"{_rel(page)}: {command}: {err}")


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_image_and_page_a_page_links_exists(page):
    text = page.read_text()
    missing = [target for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
               if not target.startswith(("http://", "https://"))
               and not (page.parent / target).exists()]
    assert not missing, f"{_rel(page)} links to missing files: {missing}"


def _script_defaults() -> dict[str, dict]:
    return {name: constants_of(vars(importlib.import_module(f"{p.parent.name}.{name}")))
            for p in ROOT.glob("*_run_scripts/*.py") if (name := p.stem) != "__init__"}


def _value(text: str):
    try:
        return ast.literal_eval(text.strip('"') if text.startswith('"(') else text)
    except (ValueError, SyntaxError):
        return text.strip('"')


def stated_defaults(text: str) -> list[tuple[str | None, str, object]]:
    """(script or None, NAME, value) a page states as a default: `NAME=value` followed by
    "(default", "(new default" or "(today's default", the "Defaults it led to:" lists of the
    studies ("`script` `NAME=value`"), "`script` now defaults to `NAME=value`, ...", and the
    README's constants table."""
    found = [(None, m.group(1), _value(m.group(2))) for m in re.finditer(
        r"`([A-Z][A-Z0-9_]*)=([^`]+)`\**\s*\((?:new |today's )?default[),;]", text)]
    for block in re.findall(r"Defaults it led to:(.*?)(?:\n\n|$)", text, re.S):
        script = None
        for m in re.finditer(r"`(\w+)`|`([A-Z][A-Z0-9_]*)=([^`]+)`", block):
            if m.group(1) in SCRIPTS:
                script = m.group(1)
            elif m.group(2):
                found.append((script, m.group(2), _value(m.group(3))))
    now = r"`(\w+)`\s+now\s+defaults\s+to((?:,?\s+(?:and\s+)?`[A-Z][A-Z0-9_]*=[^`]+`)+)"
    for m in re.finditer(now, text):
        found += [(m.group(1), name, _value(value))
                  for name, value in re.findall(r"`([A-Z][A-Z0-9_]*)=([^`]+)`", m.group(2))]
    for m in re.finditer(r"^\| `([A-Z][A-Z0-9_]*)` \| `([^`]+)` \|", text, re.M):
        found.append(("*", m.group(1), _value(m.group(2))))
    return found


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_the_defaults_a_page_states_are_the_scripts_constants(page):
    scripts, wrong = _script_defaults(), []
    for script, name, value in stated_defaults(page.read_text()):
        having = {s: c[name] for s, c in scripts.items() if name in c}
        if script == "*":  # the README's table: every script that has the constant
            bad = {s: v for s, v in having.items() if v != value}
            wrong += [f"{name}={value!r} but {s} has {v!r}" for s, v in bad.items()]
        elif script is not None:
            if having.get(script, object()) != value:
                wrong.append(f"{script} {name}={value!r} but it has {having.get(script)!r}")
        elif having and value not in having.values():
            wrong.append(f"{name}={value!r} is no script's default ({having})")
    assert not wrong, f"{_rel(page)}: " + "; ".join(wrong)


def test_stated_defaults_are_found_where_pages_state_them():
    text = ("a `LR=1e-3` (new default) and\n\nDefaults it led to: `ganmain` `WIDTH=48`.\n\n"
            "so `vaemain` now defaults to `BETA=20`, `EPOCHS=30` (about")
    assert stated_defaults(text) == [(None, "LR", 1e-3), ("ganmain", "WIDTH", 48),
                                     ("vaemain", "BETA", 20), ("vaemain", "EPOCHS", 30)]
    assert len(stated_defaults((ROOT / "README.md").read_text())) >= 4


def test_every_page_holds_the_latest_published_tables():
    from benchmarks import build_docs
    assert build_docs.main([f"--DOCS={ROOT / 'docs'}", "--CHECK=True"]) == []
