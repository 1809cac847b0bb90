"""One log channel: eprl's modules log through `logging.getLogger("eprl.<package>.<module>")`.

The CLI calls `configure_logging()` once: records of the `eprl` loggers print as bare lines, info to
stdout and warnings to stderr (the lines the commands have always printed), and under torchrun only
rank 0 prints below WARNING. A library user gets the same lines by calling it too, or routes the
`eprl` records wherever any other logging goes (`logging.basicConfig(level=logging.INFO)`).
"""

from __future__ import annotations

import logging
import sys

ROOT = "eprl"


class RankZeroFilter(logging.Filter):
    """Ranks other than 0 pass warnings and errors only: every rank runs the same loop, one reports it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        from .distributed import process_rank  # torch: imported when the first record arrives, not at CLI start

        return process_rank() == 0


class ConsoleHandler(logging.Handler):
    """Bare lines, info to stdout and warnings to stderr; the streams are looked up per record, so a
    redirected sys.stdout (pytest's capture, contextlib.redirect_stdout) sees them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure_logging(level: int = logging.INFO) -> logging.Logger:
    """Install the console handler on the `eprl` logger (once: calling again replaces it)."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, ConsoleHandler)]:
        logger.removeHandler(handler)
    handler = ConsoleHandler()
    handler.addFilter(RankZeroFilter())
    logger.addHandler(handler)
    logger.setLevel(level)
    return logger
