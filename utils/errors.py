"""One exception type for mistakes a user can fix, and the wrapper that prints it as one line."""
import errno
import sys
from typing import Callable


INTERRUPTED_STATUS = 130  # the shell's status for a process stopped by Ctrl-C (128 + SIGINT)


class UserError(Exception):
    """A wrong constant, unknown dataset, missing or corrupt checkpoint: reported as one line."""


class Interrupted(UserError):
    """Ctrl-C during training, after the checkpoint was saved (a caller running several jobs
    stops instead of going on to the next)."""


# What the file system says when SAVE_ROOT cannot take a file: full, read-only, no permission.
WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM,
                getattr(errno, "EDQUOT", errno.ENOSPC)}


def one_line(text: str, limit: int = 600) -> str:
    """A message folded onto one line (and cut at `limit` characters)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def run_cli(main: Callable[[], object]) -> None:
    """Call a run script's main(); a UserError becomes one line on stderr and exit status 2,
    and so does a file that cannot be written (a full disk, a read-only or foreign SAVE_ROOT):
    every checkpoint and page is written atomically, so what was there before is intact."""
    from utils import distributed
    try:
        main()
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS if isinstance(err, Interrupted) else 2)
    except OSError as err:
        if err.errno not in WRITE_ERRORS:
            raise
        where = f" {err.filename}" if err.filename else ""
        print(f"error: could not write{where}: {err.strerror or err} (check SAVE_ROOT: free "
              f"space and permissions); files written before are intact", file=sys.stderr)
        sys.exit(2)
    finally:
        distributed.shutdown()
