"""Polygraphy's messages, TensorRT's among them, kept for the build log and the one-line errors.

    with captured(VERBOSE) as messages:
        ...                                   # Polygraphy loaders and runners
    messages.lines, messages.last_error

Polygraphy logs to stdout through its global logger ``G_LOGGER`` and forwards
TensorRT's messages to it (TensorRT INFO as Polygraphy VERBOSE, WARNING as
WARNING, ERROR as ERROR); its fatal errors are logged, then raised as
PolygraphyException. Within `captured`, its messages go to the Python logger
"Polygraphy" and from there only to the yielded `Messages`: nothing reaches the
terminal, so a command's output stays its own and a failure is one line.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

VERBOSE, INFO, WARNING, ERROR = 10, 20, 30, 40     # Polygraphy's severities (polygraphy.logger.Logger)


class Messages(logging.Handler):
    """Collects Polygraphy's messages: `lines` (as Polygraphy formats them, "[W] ...") and `last_error`
    (the first line of the last ERROR message, without its "[E] " prefix; "" without one)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.last_error = ""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.lines.append(text)
        if record.levelno == ERROR and text.strip():
            self.last_error = text.strip().split(" ", 1)[-1].splitlines()[0].strip()


@contextlib.contextmanager
def captured(severity: int = WARNING) -> Iterator[Messages]:
    """Within the block, Polygraphy's messages of `severity` and above go to the yielded Messages only
    (uncoloured); Polygraphy's logger is restored afterwards."""
    from polygraphy.logger import G_LOGGER

    messages = Messages()
    logger = logging.getLogger("Polygraphy")
    saved = G_LOGGER.use_python_logging_system, G_LOGGER.module_severity, G_LOGGER.colors
    saved_logger = logger.propagate, logger.level
    G_LOGGER.use_python_logging_system, G_LOGGER.module_severity, G_LOGGER.colors = True, severity, False
    logger.propagate = False
    logger.setLevel(severity)
    logger.addHandler(messages)
    try:
        yield messages
    finally:
        logger.removeHandler(messages)
        logger.propagate = saved_logger[0]
        logger.setLevel(saved_logger[1])
        G_LOGGER.use_python_logging_system, G_LOGGER.module_severity, G_LOGGER.colors = saved
