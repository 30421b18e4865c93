"""Atomic writes and run locks: every file a run writes appears whole or not at all, and one
process at a time trains a run.

A file is written to a temporary name beside it (`.<name>.<pid>.<random>.tmp`), flushed to disk
and renamed over the target, so a reader (or a second run writing the same index page) sees the
old file or the new one, never a mixture, and a killed writer leaves the old file intact. The
temporary files that a killed writer left behind carry its process id; the next write of the
same file removes those whose process is gone.
"""
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from utils.errors import UserError

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary files of earlier writes of `path` whose writer has gone (and those
    of the older format `<name>*.tmp` that carried no process id)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for temp in path.parent.iterdir():
        match = _TEMP.match(temp.name)
        stale = (match is not None and match["name"] == path.name
                 and not _alive(int(match["pid"])))
        old_format = temp.name.startswith(path.name) and temp.name.endswith(".tmp")
        if stale or old_format:
            temp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: Path) -> Iterator[IO[bytes]]:
    """A binary handle whose contents replace `path` when the block ends without an error (the
    temporary file is removed otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Replace `path` by `text` (UTF-8) atomically."""
    with atomic_open(path) as handle:
        handle.write(text.encode("utf-8"))


def write_json(path: Path, obj) -> None:
    """Replace `path` by `obj` as indented JSON atomically (non-JSON values as their str)."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


_HELD: dict[Path, IO] = {}  # this process's run locks, held until it exits


def lock_run(folder: Path, name: str) -> None:
    """Take the run's lock (`folder`/lock) for this process, or raise a one-line UserError when
    another process holds it. The operating system drops the lock when its process ends, killed
    or not, so a crash never leaves a run locked. Taking it again in the same process is a
    no-op. Where file locks are not available (not POSIX) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        return
    folder = Path(folder)
    path = (folder / "lock").resolve()
    if path in _HELD:
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"run {name} is in use by {holder}; wait for it to finish (or stop it) "
                        f"before resuming it") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}\n")
    handle.flush()
    _HELD[path] = handle


def unlock_run(folder: Path) -> None:
    """Release this process's lock of the run in `folder` (a no-op if it holds none)."""
    handle = _HELD.pop((Path(folder) / "lock").resolve(), None)
    if handle is not None:
        handle.close()
