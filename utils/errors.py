"""One exception type for mistakes a user can fix, and how it is told: one line
(utils/cli.py's run_cli prints it and exits 2)."""

INTERRUPTED_STATUS = 130  # the shell's status for a process stopped by Ctrl-C (128 + SIGINT)


class UserError(Exception):
    """A wrong constant, unknown dataset, missing or corrupt checkpoint: reported as one line."""


class Interrupted(UserError):
    """Ctrl-C during training, after the checkpoint was saved (a caller running several jobs
    stops instead of going on to the next)."""


def one_line(text: str, limit: int = 600) -> str:
    """A message folded onto one line (and cut at `limit` characters)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."
