"""The floor plan holds: no import circles between the project's modules, eval scripts and
the scoring benchmark reach models without importing a training loop, and files in models/
and train/ stay readable (STYLE.md: about 300 lines)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "train", "utils", "GAN_run_scripts", "VAE_run_scripts",
            "Diffusion_run_scripts", "LDM_run_scripts", "benchmarks")
LOOPS = {"train.gan", "train.vae", "train.diffusion", "train.diffusion_step", "train.autoencoder",
         "train.common"}  # the training loops and their step; train.evaluator trains a classifier
EVAL_SCRIPTS = ("GAN_run_scripts.evalGan", "VAE_run_scripts.vaeEval",
                "Diffusion_run_scripts.DiffusionEval", "LDM_run_scripts.LDMEval",
                "LDM_run_scripts.StableDiffusion", "benchmarks.evaluate_samples")


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p
            for package in PACKAGES for p in (ROOT / package).glob("*.py")
            if p.name != "__init__.py"}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


def test_the_graph_is_read_from_the_real_imports():
    graph = _graph()
    assert "train.inference" in graph["Diffusion_run_scripts.DiffusionEval"]
    assert "utils.errors" in graph["utils.cli"]


def test_no_module_imports_itself_through_others():
    graph, cycles = _graph(), []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("script", EVAL_SCRIPTS)
def test_eval_scripts_reach_models_without_a_training_loop(script):
    graph, seen, todo = _graph(), set(), [script]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert not seen & LOOPS, f"{script} imports {sorted(seen & LOOPS)}"


def test_models_and_train_files_stay_short():
    long = {str(p.relative_to(ROOT)): n for folder in ("models", "train")
            for p in (ROOT / folder).glob("*.py")
            if (n := len(p.read_text().splitlines())) > 300}
    assert not long, f"over 300 lines: {long}"
