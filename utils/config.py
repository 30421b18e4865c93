"""Run-script constants as the interface: command-line overrides, --help, config.json."""
import ast
import difflib
import inspect
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

from utils import distributed, files
from utils.errors import UserError
from utils.recipes import RECIPES, recipe_constants

_CONSTANT_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.*?)(?:\s*#\s*(.*))?$")
_LITERAL_TYPES = (bool, int, float, str, tuple, list, dict, type(None))


def constants_of(namespace: dict) -> dict:
    """The UPPER_CASE constants of a module namespace, in definition order: those assigned in
    the module's own source (a name imported from elsewhere, like PREDICTION_TYPES, is not one),
    or every UPPER_CASE literal when there is no source."""
    assigned = _assigned_names(_source(namespace))
    return {name: value for name, value in namespace.items()
            if name.isupper() and not name.startswith("_") and _is_literal(value)
            and (assigned is None or name in assigned)}


def _is_literal(value: Any) -> bool:
    """A plain literal all the way down (what a command line and config.json can hold)."""
    if isinstance(value, (tuple, list)):
        return all(_is_literal(v) for v in value)
    if isinstance(value, dict):
        return all(_is_literal(k) and _is_literal(v) for k, v in value.items())
    return isinstance(value, _LITERAL_TYPES)


def _source(namespace: dict) -> str:
    module = sys.modules.get(namespace.get("__name__", ""))
    try:
        return inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):
        return ""


def _assigned_names(source: str) -> set[str] | None:
    """Names assigned by top-level `NAME = ...` statements (None without a source)."""
    if not source:
        return None
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _comments(namespace: dict) -> dict:
    """Trailing comments of `NAME = value  # comment` lines in the module's source."""
    found = {}
    for line in _source(namespace).splitlines():
        match = _CONSTANT_LINE.match(line)
        if match and match.group(3):
            found[match.group(1)] = match.group(3).strip()
    return found


def _parse_value(name: str, text: str, default: Any) -> Any:
    """Parse one override as a Python literal, checked against the default's type."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # bare strings: --DATASET=digits
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if value is None and name in _STR_OR_NONE + _STR_OR_NUMBER:
            return None
        if name in _STR_OR_NUMBER and _is_number(value):
            return float(value)
        return text if not isinstance(value, str) else value  # --TAG=2024 is the name "2024"
    elif isinstance(default, (tuple, list)):
        if isinstance(value, (tuple, list)):
            return type(default)(value)
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    raise UserError(f"--{name} expects a {type(default).__name__} like {default!r}, got {text!r}")


def _split_args(argv: Sequence[str]) -> list[tuple[str, str]]:
    """Turn ['--A=1', '--B', '2'] into [('A', '1'), ('B', '2')]."""
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}; overrides look like --EPOCHS=3")
        if "=" in arg:
            name, text = arg[2:].split("=", 1)
        elif i + 1 < len(argv):
            name, text = arg[2:], argv[i + 1]
            i += 1
        else:
            raise UserError(f"{arg} needs a value, e.g. {arg}=3")
        pairs.append((name, text))
        i += 1
    return pairs


def help_text(namespace: dict) -> str:
    """Every constant with its default and trailing comment."""
    doc = (namespace.get("__doc__") or "").strip()
    comments = _comments(namespace)
    lines = [doc, "", "Constants (override with --NAME=value):"] if doc else ["Constants:"]
    for name, value in constants_of(namespace).items():
        comment = f"  # {comments[name]}" if name in comments else ""
        lines.append(f"  --{name}={value!r}{comment}")
    if "RECIPE" in constants_of(namespace):
        script = script_name(namespace)
        lines += ["", "Recipes (--RECIPE=name; docs/recipes.md):"]
        lines += [f"  {name}: {recipe['about']}" for name, recipe in RECIPES.items()
                  if script in recipe]
    return "\n".join(lines)


# Constants with one meaning in every script that has them, checked where they are parsed:
# sizes and counts that must be at least 1 (or 0), caps where None means "no cap", paths, and
# lists that must not be empty. A constant whose default is None takes any literal from the
# command line, so these rules are its only type check.
_AT_LEAST_ONE = ("BATCH_SIZE", "PROGRESSION_ROWS", "GRID_SIZE", "STEPS", "STRIP_IMAGES",
                 "STRIP_COLUMNS", "COMPARE_IMAGES", "N_FIXED", "N_PAIRS", "N_RECON", "N_VALUES",
                 "N_IMAGES", "SAMPLE_STEPS", "TIMESTEPS", "CHECKPOINT_EVERY", "RECON_EVERY",
                 "IMAGE_SIZE", "LATENT_DIM", "LATENT_CHANNELS", "BASE", "BLOCKS", "HEADS",
                 "WIDTH", "HEIGHT", "PATCH", "UNET_PATCH", "DIT_WIDTH", "DIT_DEPTH", "DIT_HEADS")
_AT_LEAST_ZERO = ("EPOCHS", "SEED", "N_SAMPLES", "PER_CLASS", "COMPARE_FID", "STRIP_STEPS",
                  "GUIDE_EPOCH", "WARMUP_STEPS", "MBSTD_GROUP")
_CAPS = ("N_TRAIN", "N_TEST", "DIM")  # None (no cap / automatic) or a whole number
_POSITIVE_OR_NONE = ("MINUTES", "LR_D")
_STR_OR_NONE = ("RESULTS",)  # a path, or None: off
_STR_OR_NUMBER = ("GRAD_CLIP",)  # a keyword ("auto"), None or a number
# None or a name / path:
_NAMES = ("RESUME", "TAG", "WEIGHTS", "TOKENIZER", "INIT_IMAGE", "RECIPE")
_NOT_EMPTY = ("SCALES", "COMPARE", "NOISED_T", "RUNS")


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_common(c: SimpleNamespace) -> None:
    """Raise a one-line UserError for a constant that breaks its rule above, or a float
    constant that is not finite (nan, inf)."""
    values = vars(c)
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value!r}")
    for names, low in ((_AT_LEAST_ONE, 1), (_AT_LEAST_ZERO, 0)):
        for name in (n for n in names if n in values):  # a number, or a list of them
            value = values[name]
            each = value if isinstance(value, (tuple, list)) and value else [value]
            if not all(_is_whole(v) and low <= v < 2 ** 63 for v in each):
                raise UserError(f"{name} must be a whole number >= {low}, got {value!r}")
    for name in _CAPS:
        value = values.get(name)
        low = 0 if name == "DIM" else 1  # N_TRAIN=0 meant all images; say None for that
        if value is not None and not (_is_whole(value) and value >= low):
            raise UserError(f"{name} must be None or a whole number >= {low}, got {value!r}")
    for name in _POSITIVE_OR_NONE:
        value = values.get(name)
        if value is not None and not (_is_number(value) and value > 0):
            raise UserError(f"{name} must be None or a number > 0, got {value!r}")
    for name in _NAMES:
        value = values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise UserError(f"{name} must be None or a name, got {value!r}")
    for name in _NOT_EMPTY:
        if name in values and not values[name]:
            raise UserError(f"{name} must list at least one value, got {values[name]!r}")


def resolve_constants(namespace: dict, argv: Sequence[str] | None = None) -> SimpleNamespace:
    """The module's constants with command-line overrides applied (the module is not modified)
    and checked (check_common)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(help_text(namespace))
        raise SystemExit(0)
    values = constants_of(namespace)
    pairs = _split_args(argv)
    if "RECIPE" in values:  # a named set of constants (utils/recipes.py), under the command line
        recipe = dict(pairs).get("RECIPE")
        recipe = values["RECIPE"] if recipe is None else _parse_value("RECIPE", recipe, None)
        if recipe is not None:
            values.update(recipe_constants(recipe, script_name(namespace), values))
    for name, text in pairs:
        if name not in values:
            close = difflib.get_close_matches(name, list(values), n=1)
            hint = f"; did you mean --{close[0]}?" if close else ""
            raise UserError(f"unknown constant --{name}{hint} (--help lists them)")
        values[name] = _parse_value(name, text, values[name])
    const = SimpleNamespace(**values)
    check_common(const)
    return const


def script_name(namespace: dict) -> str:
    """The script's module name without its package ("LDMEval"), also under `python -m`, where
    __name__ is "__main__" and the real name is in __spec__."""
    spec = namespace.get("__spec__")
    return str(getattr(spec, "name", None) or namespace.get("__name__", "")).split(".")[-1]


def given_constants(argv: Sequence[str] | None = None) -> set[str]:
    """The names of the constants typed on the command line (sys.argv by default)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return {name for name, _ in _split_args(argv)}


def like_default(value: Any, default: Any) -> Any:
    """A value read back from JSON in the type of the constant's default (lists to tuples)."""
    if isinstance(default, tuple) and isinstance(value, list):
        inner = default[0] if default else None
        return tuple(like_default(v, inner) for v in value)
    return value


def save_config(config: SimpleNamespace | dict, path: Path) -> None:
    """Write the resolved constants as JSON."""
    data = vars(config) if isinstance(config, SimpleNamespace) else config
    if distributed.is_main():
        files.write_json(path, data)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise a one-line UserError when a constant is not one of its allowed values."""
    if value not in choices:
        raise UserError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


def check_betas(c: SimpleNamespace, name: str = "BETAS") -> None:
    """Raise a one-line UserError unless the named constant is two Adam betas in [0, 1)."""
    value = getattr(c, name)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                       for b in value)):
        raise UserError(f"{name} must be two numbers in [0, 1), e.g. (0.9, 0.999), "
                        f"got {value!r}")


def check_positive(c: SimpleNamespace, *names: str) -> None:
    """Raise a one-line UserError unless each named constant is a positive number."""
    for name in names:
        value = getattr(c, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise UserError(f"{name} must be a positive number, got {value!r}")
