"""potluck.observe.logs and `--log-format json`: one JSON object a line, with the node's context."""

from __future__ import annotations

import io
import json
import logging

from potluck.observe import logs


def test_a_json_line_carries_time_level_context_event_and_fields():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("potluck.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logs.set_context(lambda: {"node": "ab12", "run": "r1", "round": 4})
        logger.warning("round %d closed", 4, extra={"updates": 3})
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("failed")
    finally:
        logs.set_context(lambda: {})
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["time"].endswith("+00:00") and first["level"] == "WARNING"
    assert (first["node"], first["run"], first["round"]) == ("ab12", "r1", 4)
    assert first["event"] == "round 4 closed" and first["fields"] == {"updates": 3}
    assert first["logger"] == "potluck.test.json"
    assert "ValueError: bad" in second["fields"]["exception"]
