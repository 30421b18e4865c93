"""How long an image folder takes to load, decoded the first time and from its cache later, and
the memory it holds: each leg in a fresh process (peak resident memory, VmHWM).

    python -m benchmarks.folder_load --DATA_ROOT=<folder> --NAME=cifar10

Publishes docs/results/folder_load_<NAME>.md and .json (RESULTS=None: only prints).
"""
import json
import subprocess
import sys

from benchmarks.report import publish
from utils.cli import run_cli
from utils.config import resolve_constants
from utils.errors import UserError

DATA_ROOT = "data"  # the image folder (DATASET="folder")
NAME = "folder"  # what the published table is called (folder_load_<NAME>)
SPLIT = "train"  # which split is timed
IMAGE_SIZE = 32  # pixels
CHANNELS = None  # 1 or 3; None: the folder's own
SEED = 0  # the held-out split's seed (a folder without train/ and test/)
RESULTS = "docs/results"  # publish the table here for docs/ (None: only print it)

_LEG = """
import json, resource, sys, time
from utils import image_folder
root, split, size, channels, seed, fresh = json.loads(sys.argv[1])
if fresh:
    for old in image_folder.cache_folder(__import__("pathlib").Path(root)).glob(f"{split}-*.pt"):
        old.unlink()
start = time.perf_counter()
images, labels, classes = image_folder.load_folder(root, split, size, channels, seed)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
print(json.dumps({"seconds": seconds, "peak_mb": peak, "images": len(images),
                  "classes": len(classes), "shape": list(images.shape[1:]),
                  "array_mb": images.numel() / 2 ** 20}))
"""


def leg(const, fresh: bool) -> dict:
    """One load in a fresh Python process; its last line is the JSON of the measurement."""
    args = json.dumps([const.DATA_ROOT, const.SPLIT, const.IMAGE_SIZE, const.CHANNELS,
                       const.SEED, fresh])
    done = subprocess.run([sys.executable, "-c", _LEG, args], capture_output=True, text=True)
    if done.returncode:
        raise UserError(f"loading {const.DATA_ROOT} failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    const = resolve_constants(globals(), argv)
    rows = [{"load": "first (decode, then cache)", **leg(const, True)},
            {"load": "cached", **leg(const, False)}]
    first = rows[0]
    lines = [f"{first['images']:,} images of {first['classes']} classes, shape "
             f"{tuple(first['shape'])}, {first['array_mb']:.0f} MB as uint8", "",
             "| load | seconds | peak resident memory (MB) |", "|---|---|---|"]
    lines += [f"| {r['load']} | {r['seconds']:.2f} | {r['peak_mb']:.0f} |" for r in rows]
    print("\n".join(lines))
    publish(const.RESULTS, f"folder_load_{const.NAME}", "\n".join(lines), {"rows": rows},
            module=__name__, argv=argv, precision="uint8")
    return rows


if __name__ == "__main__":
    run_cli(main)
