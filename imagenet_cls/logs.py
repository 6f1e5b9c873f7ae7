"""Logging for every entry point: our lines on stderr, plain; Lightning's and torch's start-up noise filtered."""

from __future__ import annotations

import logging
import sys
import warnings

# Lightning's start-up lines nobody needs: promotional tips, an internal step, hardware that is not there.
LIGHTNING_NOISE = (
    "💡 Tip",
    "Loading `train_dataloader` to estimate number of stepping batches",
    "TPU available: False",
)


def _drop_lightning_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(LIGHTNING_NOISE)


class CurrentStderrHandler(logging.StreamHandler):
    """A StreamHandler that writes to ``sys.stderr`` as it is at each record, not as it was when it was made.

    ``main`` may run many times in one process (tests, notebooks, the demo) while ``sys.stderr`` is swapped and
    closed by whoever captured it; a handler holding the old stream then fails with "I/O operation on closed file".
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: ANN201 (logging's attribute)
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 (set once by StreamHandler.__init__)
        pass


def configure_logging() -> None:
    """Our log lines on stderr; Lightning's and torch's noise filtered at its source (the demo calls this too)."""
    # Lightning 2.6 builds torch's deprecated LeafSpec (torch 2.14 here warns); nothing a user can change.
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning, module=r"lightning\.pytorch"
    )
    for handler in logging.getLogger("lightning.pytorch").handlers:
        if _drop_lightning_noise not in handler.filters:
            handler.addFilter(_drop_lightning_noise)
    logger = logging.getLogger("imagenet_cls")
    if not logger.handlers:
        handler = CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
