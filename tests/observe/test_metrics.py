"""potluck.observe.metrics: a GetStatus reply, renamed after Prometheus' conventions."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from potluck.observe.metrics import PHASES, render
from potluck.rpc.jsonify import message_to_dict
from potluck.v1 import control_pb2

NODE = "ab" * 32


def _status(**fields) -> dict:
    reply = control_pb2.GetStatusResponse(
        node_id=NODE, run="default", run_id="cd" * 32, role="keeper", agent_version="potluck/test",
        peers=2, round=7, phase="collecting", committed_round=6, accepted_updates=5, commits=3, attempts=4,
        failed_attempts=1, rejected_updates={"stale_base": 2, "wrong_run": 0}, accuracy=0.75,
        traffic=control_pb2.Traffic(kinds={"update_transfer": control_pb2.TrafficBytes(sent=10, recv=20)}),
        defence=control_pb2.Defence(
            bans=[control_pb2.Ban(node_id="ef" * 32, reason="equivocation", round=3)],
            probation=[control_pb2.Probation(node_id="01" * 32, rounds_left=2)],
        ),
        aggregation=control_pb2.Aggregation(
            last_phases={"entries": 0.5, "merge": 0.25, "commit": 0.125}, probe_counts={"probe_worse": 3},
            commit_seconds=control_pb2.Histogram(bounds=[0.5, 1.0, 2.0], counts=[1, 3, 3], sum=3.5, count=4)),
        sync=control_pb2.Sync(version="12" * 32, started=1000.0, bytes=300, target_bytes=1200,
                              downloaded_bytes=5000, tensors_reused=4),
        **fields,
    )  # fmt: skip
    return message_to_dict(reply)


def _samples(text: bytes) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_the_status_becomes_prometheus_samples():
    samples = _samples(render(lambda: _status()))
    assert samples[("potluck_up", ())] == 1
    assert samples[("potluck_round", ())] == 7 and samples[("potluck_peers", ())] == 2
    assert samples[("potluck_updates_accepted_total", ())] == 5
    assert samples[("potluck_updates_rejected_total", (("reason", "stale_base"),))] == 2
    assert samples[("potluck_commits_total", ())] == 3
    assert samples[("potluck_aggregation_attempts_failed_total", ())] == 1
    assert samples[("potluck_traffic_received_bytes_total", (("kind", "update_transfer"),))] == 20
    assert samples[("potluck_bans", (("reason", "equivocation"),))] == 1
    assert samples[("potluck_probation_nodes", ())] == 1
    assert samples[("potluck_last_commit_phase_seconds", (("phase", "merge"),))] == 0.25
    assert samples[("potluck_probe_excluded_total", (("reason", "probe_worse"),))] == 3
    assert samples[("potluck_heldout_score", ())] == 0.75
    assert samples[("potluck_sync_bytes_total", ())] == 5000
    assert samples[("potluck_sync_tensors_reused_total", ())] == 4
    assert samples[("potluck_sync_progress_bytes", ())] == 300
    assert samples[("potluck_sync_target_bytes", ())] == 1200
    assert samples[("potluck_sync_started_timestamp_seconds", ())] == 1000.0
    latency = {
        dict(k[1])["le"]: v for k, v in samples.items() if k[0] == "potluck_commit_latency_seconds_bucket"
    }
    assert latency == {"0.5": 1, "1.0": 3, "2.0": 3, "+Inf": 4}
    assert samples[("potluck_commit_latency_seconds_count", ())] == 4
    assert samples[("potluck_commit_latency_seconds_sum", ())] == 3.5
    phases = {dict(k[1])["phase"]: v for k, v in samples.items() if k[0] == "potluck_phase"}
    assert phases == {p: float(p == "collecting") for p in (*PHASES, "other")}


def test_names_and_labels_follow_the_conventions():
    text = render(lambda: _status()).decode()
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("potluck_")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        for sample in family.samples:  # bounded label sets: never a node or peer id
            assert not {"node", "node_id", "peer", "peer_id"} & sample.labels.keys()
    assert (
        NODE not in text and "ef" * 32 not in text and "12" * 32 not in text
    )  # ids appear nowhere, not even in a label value


def test_an_unevaluated_version_has_no_score_and_a_starting_node_only_says_it_is_down():
    samples = _samples(render(lambda: _status() | {"accuracy": -1.0}))
    assert not any(name == "potluck_heldout_score" for name, _ in samples)
    # a node without rounds has no histogram bounds: no latency series rather than an empty histogram
    no_rounds = _status() | {"aggregation": message_to_dict(control_pb2.Aggregation())}
    assert not any(
        name.startswith("potluck_commit_latency") for name, _ in _samples(render(lambda: no_rounds))
    )
    assert _samples(render(lambda: None)) == {("potluck_up", ()): 0.0}
