"""``--log-format json``: one JSON object a line (time, level, node, run, round, event, logger, fields),
hivemind's own lines included (:func:`adopt_hivemind`).

``node``, ``run`` and ``round`` come from the running node (lifecycle.py calls :func:`set_context` once
it has started; before that they are null). ``event`` is the message; ``fields`` holds what a caller
passed with ``extra=`` and the traceback of an exception.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
# by number: hivemind renames WARNING to "WARN" for its own log lines; ours stay the standard names
LEVELS = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARNING", logging.ERROR: "ERROR"}
_context: Callable[[], dict[str, Any]] = lambda: {}  # noqa: E731


def set_context(context: Callable[[], dict[str, Any]]) -> None:
    """Where the formatter reads node, run and round from (called on every record: keep it cheap)."""
    global _context
    _context = context


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        try:
            context = _context()
        except Exception:  # a node half stopped must not break logging
            context = {}
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": LEVELS.get(record.levelno, record.levelname),
            "node": context.get("node"),
            "run": context.get("run"),
            "round": context.get("round"),
            "event": record.getMessage(),
            "logger": record.name,
            "fields": fields,
        }
        return json.dumps(line, default=str)


def configure(level: str, fmt: str, stream: Any) -> None:
    """The root logger: today's human lines, or JSON lines."""
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def adopt_hivemind() -> None:
    """hivemind's loggers (and the p2pd lines it relays) print in hivemind's own format through its own
    handler; with JSON lines they go to the root handler instead. Call once HIVEMIND_LOGLEVEL is set:
    this imports hivemind."""
    from hivemind.utils.logging import use_hivemind_log_handler

    use_hivemind_log_handler("nowhere")
