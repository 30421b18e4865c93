"""What a training loop is told: the MINUTES Deadline, and LoopOptions, what every loop takes
from its run as one typed object, built from the run's resolved constants in one place
(LoopOptions.of) instead of a dozen keyword arguments at every loop call. A family's own
settings (a diffusion run's guide epoch, the autoencoder's figure cadence) stay keyword
arguments of its loop."""
import time
from dataclasses import dataclass
from types import SimpleNamespace

from utils import distributed
from utils.data import DataSpec
from utils.errors import UserError


class Deadline:
    """The MINUTES wall-clock budget of one invocation (None: no limit).

    The epoch in progress ends early when it passes (its evaluation, log record and checkpoint
    still happen) and no further epoch starts, so a run stopped this way can be resumed.
    """

    def __init__(self, minutes: float | None):
        if minutes is not None and minutes <= 0:
            raise UserError(f"MINUTES must be > 0 (or None for no limit), got {minutes}")
        self.minutes = minutes
        self.at = None if minutes is None else time.monotonic() + 60.0 * minutes

    def seconds_left(self) -> float | None:
        """Seconds until the budget runs out (0 once it has; None without a budget)."""
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def passed(self) -> bool:
        """Whether the budget has run out; under torchrun, on any rank (so all stop together).
        Without a budget no rank asks the others (every rank has the same MINUTES)."""
        if self.at is None:
            return False
        return distributed.any_rank(time.monotonic() >= self.at)


@dataclass(frozen=True)
class LoopOptions:
    """The settings a loop shares with every other: the data it records in the checkpoint, how
    long and in what batches it trains, when it saves and stops, and what it continues."""
    data: DataSpec  # what the checkpoint records about the data (DataSpec.of reads it back)
    epochs: int  # the total epochs of the run (a resumed run continues to this)
    batch_size: int  # images (or latents) per optimiser step, over all processes
    config: dict  # every resolved constant: config.json, the checkpoint, TensorBoard
    checkpoint_every: int  # epochs between checkpoints (and at the end); each script has its own
    deadline: Deadline | None = None  # MINUTES: stop at the end of the epoch that passes it
    state: dict | None = None  # the checkpoint a resumed run continues (None: a new run)
    flip: bool = False  # random horizontal flips of the training images
    progression_rows: int = 8  # fixed latents followed across epochs in the progression

    @classmethod
    def of(cls, const: SimpleNamespace, data: DataSpec, state: dict | None,
           deadline: Deadline | None = None) -> "LoopOptions":
        """The options of a run script's resolved constants (the one place that reads their
        names for a loop); `deadline` started when the script did, so loading counts."""
        return cls(data=data, epochs=const.EPOCHS, batch_size=const.BATCH_SIZE,
                   config=vars(const), checkpoint_every=const.CHECKPOINT_EVERY,
                   deadline=deadline if deadline is not None else Deadline(const.MINUTES),
                   state=state, flip=getattr(const, "FLIP", False),
                   progression_rows=getattr(const, "PROGRESSION_ROWS", 8))
