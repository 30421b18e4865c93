"""One exception type for mistakes a user can fix, and the wrapper that prints it as one line."""
import sys
from typing import Callable


INTERRUPTED_STATUS = 130  # the shell's status for a process stopped by Ctrl-C (128 + SIGINT)


class UserError(Exception):
    """A wrong constant, unknown dataset, missing or corrupt checkpoint: reported as one line."""


class Interrupted(UserError):
    """Ctrl-C during training, after the checkpoint was saved (a caller running several jobs
    stops instead of going on to the next)."""


def run_cli(main: Callable[[], object]) -> None:
    """Call a run script's main(); a UserError becomes one line on stderr and exit status 2."""
    from utils import distributed
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS if isinstance(err, Interrupted) else 2)
    finally:
        distributed.shutdown()
