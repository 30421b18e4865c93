"""Results for docs/: a benchmark publishes its table as docs/results/<name>.md and <name>.json,
each with when, where, in what precision and by which exact command it was measured, and
`python -m benchmarks.build_docs` copies every table into the pages that name it. A rerun of the
benchmark refreshes the table; no number in docs/ is typed by hand.

A page includes a table with the two lines
    <!-- results: NAME -->
    <!-- /results -->
between which build_docs writes docs/results/NAME.md.
"""
import datetime
import platform
import shlex
import sys
from pathlib import Path

import torch

from utils import files
from utils.device import bf16_is_fast, resolve_precision

def machine() -> str:
    """This machine in one phrase: CPU model, cores torch uses, and bf16 support."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = "with" if bf16_is_fast(torch.device("cpu")) else "without"
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{model}, {torch.get_num_threads()} threads, {bf16} fast bf16{gpu}"


def precision_name(setting: str) -> str:
    """What PRECISION=auto|bf16|fp32 runs as on this machine's GPU, or else its CPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return "bf16" if resolve_precision(setting, device) else "fp32"


def command(module: str, argv) -> str:
    """The command line that reproduces a benchmark call (`module`: its __name__)."""
    if module == "__main__":  # started with python -m: the module's own name
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python -m", module, *map(shlex.quote, args)])


def publish(folder: str | None, name: str, table: str, data: dict, *, module: str, argv,
            precision: str) -> None:
    """Write docs/results/<name>.md (a dated header, then `table`) and <name>.json (`data` with
    the same facts); folder None publishes nothing (tests, scratch runs)."""
    if not folder:
        return
    meta = {"date": datetime.date.today().isoformat(), "machine": machine(),
            "precision": precision, "command": command(module, argv),
            "torch": torch.__version__}
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    header = (f"*Measured {meta['date']} on {meta['machine']}, {precision}, torch "
              f"{meta['torch']}:* `{meta['command']}`")
    files.write_text(out / f"{name}.md", f"{header}\n\n{table.strip()}\n")
    files.write_json(out / f"{name}.json", {**meta, **data})
    print(f"published {out / name}.md and .json (python -m benchmarks.build_docs puts it in docs/)")
