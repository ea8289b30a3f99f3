"""potluck.observe.logs and `--log-format json`: one JSON object a line, with the node's context, from
the formatter and from a real node process."""

from __future__ import annotations

import io
import json
import logging

import pytest

from potluck.localswarm import LocalNode, LocalSwarm, wait_for
from potluck.observe import logs
from potluck.runfiles import write_run


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


@pytest.mark.multiprocess
def test_a_real_node_with_log_format_json_writes_only_json_lines(tmp_path):
    """`potluck --log-format json --log-level DEBUG run` with a run: every line the node process writes
    (its stderr, and its stdout beside it) is one JSON object with the node's context once it runs."""
    run = write_run(tmp_path / "run.toml", "toy", round_seconds=4.0)
    node = LocalNode(
        tmp_path / "node",
        [*LocalSwarm(tmp_path, run=run.manifest.run_id).node_args(), "--manifest", str(run.path)],
        global_args=["--log-format", "json", "--log-level", "DEBUG"],
    )
    try:
        node.start().wait_ready()
        node_id = node.status()["node_id"]

        def lines() -> list[dict]:
            return [json.loads(line) for line in node.log_path.read_text().splitlines()]

        # a line from the round engine: the round is known (the toy run's rounds are 4 s long)
        wait_for(lambda: any(e["round"] is not None and e["round"] >= 1 for e in lines()), 15, "a round")
    finally:
        rc = node.stop()
    assert rc == 0, node.log_tail()
    text = node.log_path.read_text()
    parsed = []
    for line in text.splitlines():
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert len(parsed) >= 5
    for entry in parsed:
        assert {"time", "level", "node", "run", "round", "event", "logger", "fields"} <= entry.keys(), entry
        assert entry["level"] in {"DEBUG", "INFO", "WARNING", "ERROR"} and entry["time"].endswith("+00:00")
    running = [e for e in parsed if e["node"] is not None]
    assert running and all(e["node"] == node_id[:16] and e["run"] == run.manifest.run_id for e in running)
    assert any(e["event"].startswith("metrics on http://") or "dashboard on" in e["event"] for e in running)
