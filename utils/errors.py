"""One exception type for mistakes a user can fix, and the wrapper that prints it as one line."""
import sys
from typing import Callable


class UserError(Exception):
    """A wrong constant, unknown dataset, missing or corrupt checkpoint: reported as one line."""


def run_cli(main: Callable[[], object]) -> None:
    """Call a run script's main(); a UserError becomes one line on stderr and exit status 2."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
