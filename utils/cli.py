"""The wrapper every run script's `__main__` calls: a UserError or a file that cannot be written
is one line on stderr and exit status 2."""
import errno
import sys
from typing import Callable

from utils import distributed
from utils.errors import INTERRUPTED_STATUS, Interrupted, UserError, one_line

# What the file system says when SAVE_ROOT cannot take a file: full, read-only, no permission.
WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM,
                getattr(errno, "EDQUOT", errno.ENOSPC)}


def run_cli(main: Callable[[], object]) -> None:
    """Call a run script's main(); a UserError becomes one line on stderr and exit status 2,
    and so does a file that cannot be written (a full disk, a read-only or foreign SAVE_ROOT):
    every checkpoint and page is written atomically, so what was there before is intact."""
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
