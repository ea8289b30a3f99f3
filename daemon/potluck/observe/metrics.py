"""``/metrics`` in Prometheus' text format, built at each scrape from the control API's GetStatus reply.

One source of truth: nothing here counts anything. Each scrape asks the node for the same status
`potluck status` prints (potluck.rpc.replies) and renames its fields after Prometheus' conventions:
units in names, ``_total`` on counters, and only bounded label sets (a rejection reason, a traffic
kind, a phase are labels; a peer id or node id never is). Counters restart from zero with the node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE", "PHASES", "StatusCollector", "render"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# the round engine's phases (engine/loop.py) and "idle" (a node without rounds): one series each,
# 1 for the current phase, so a dashboard can stack them without the set changing under it
PHASES = ("idle", "waiting", "syncing", "following", "collecting", "aggregating", "committed")

Status = dict[str, Any]


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _by(family: CounterMetricFamily | GaugeMetricFamily, values: dict[str, float]) -> Metric:
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


def node_metrics(s: Status) -> Iterator[Metric]:
    info = InfoMetricFamily("potluck_node", "what this node runs (one series)")
    info.add_metric([], {"run_id": s["run_id"] or s["run"], "role": s["role"], "agent": s["agent_version"]})
    yield info
    yield _gauge("potluck_uptime_seconds", "seconds since the node started", s["uptime_s"])
    yield _gauge("potluck_peers", "other live nodes of the run this node sees", s["peers"])
    yield _counter("potluck_dht_restarts", "times the DHT was restarted", s["dht_restarts"])
    yield _by(
        CounterMetricFamily("potluck_records_rejected", "DHT records rejected, by reason", labels=["reason"]),
        s["rejected_records"],
    )


def round_metrics(s: Status) -> Iterator[Metric]:
    yield _gauge("potluck_round", "the round this node is in", s["round"])
    yield _gauge(
        "potluck_committed_round", "round of the last version taken (-1: none)", s["committed_round"]
    )
    phase = s["phase"] if s["phase"] in PHASES else "other"
    yield _by(
        GaugeMetricFamily("potluck_phase", "1 for the round's current phase", labels=["phase"]),
        {p: float(p == phase) for p in (*PHASES, "other")},
    )
    yield _gauge(
        "potluck_round_deadline_timestamp_seconds",
        "unix time the current round ends (0: none)",
        s["deadline"],
    )
    yield _gauge(
        "potluck_version_age_seconds",
        "seconds since this node took its version (0: none)",
        s["version_age_s"],
    )
    yield _counter("potluck_commits", "versions taken: committed here or caught up to", s["commits"])
    yield _counter("potluck_aggregation_attempts", "aggregation attempts started", s["attempts"])
    yield _counter(
        "potluck_aggregation_attempts_failed", "aggregation attempts that failed", s["failed_attempts"]
    )
    yield _counter("potluck_rounds_abandoned", "rounds whose every attempt failed", s["abandoned_rounds"])
    yield _counter("potluck_fork_switches", "moves to the fork choice's winning history", s["fork_switches"])
    yield _counter("potluck_bad_tensors", "synced tensors that did not match their commit", s["bad_tensors"])
    agg = s.get("aggregation") or {}
    yield _by(
        CounterMetricFamily(
            "potluck_probe_excluded",
            "updates the run's probe set excluded from merges, by reason",
            labels=["reason"],
        ),
        agg.get("probe_counts") or {},
    )
    yield _by(
        GaugeMetricFamily(
            "potluck_last_commit_phase_seconds",
            "the last commit's attempt: seconds in entries, merge and commit (signatures and store)",
            labels=["phase"],
        ),
        agg.get("last_phases") or {},
    )
    latency = agg.get("commit_seconds") or {}
    if latency.get("bounds"):  # a node with rounds: the engine's histogram (engine/attempt.py)
        yield HistogramMetricFamily(
            "potluck_commit_latency_seconds",
            "commits this node merged: seconds from the attempt's start to the stored commit",
            buckets=[
                *((floatToGoString(b), c) for b, c in zip(latency["bounds"], latency["counts"], strict=True)),
                ("+Inf", latency["count"]),
            ],
            sum_value=latency["sum"],
        )
    if s["accuracy"] >= 0:  # -1: not evaluated yet; an absent series, not a fake score
        yield _gauge(
            "potluck_heldout_score",
            "held-out score of the current version (the task's metric: accuracy, or bits per byte for lm)",
            s["accuracy"],
        )


def update_metrics(s: Status) -> Iterator[Metric]:
    yield _counter("potluck_updates_accepted", "updates that passed validation", s["accepted_updates"])
    yield _by(
        CounterMetricFamily("potluck_updates_rejected", "updates rejected, by reason", labels=["reason"]),
        s["rejected_updates"],
    )
    yield _gauge("potluck_updates_held", "updates held for the current rounds", s["held_updates"])
    yield _counter("potluck_updates_fetched", "updates fetched from their holders", s["fetched_updates"])
    yield _counter("potluck_updates_published", "updates published through this node", s["published_updates"])
    yield _counter(
        "potluck_bad_holder_fetches", "fetches whose holder served other bytes", s["bad_holder_fetches"]
    )


def traffic_metrics(s: Status) -> Iterator[Metric]:
    t = s.get("traffic") or {}
    kinds = t.get("kinds") or {}
    for direction, key in (("sent", "sent"), ("received", "recv")):
        yield _by(
            CounterMetricFamily(
                f"potluck_traffic_{direction}_bytes",
                f"bytes {direction} on the wire, by kind",
                labels=["kind"],
            ),
            {kind: v[key] for kind, v in kinds.items()},
        )
    if t.get("kernel") == "ok" and t.get("total"):
        yield _counter("potluck_p2pd_sent_bytes", "TCP bytes p2pd sent (kernel count)", t["total"]["sent"])
        yield _counter("potluck_p2pd_received_bytes", "TCP bytes p2pd received", t["total"]["recv"])


def sync_metrics(s: Status) -> Iterator[Metric]:
    """Version downloads. The version being synced is no label (a new series each round): GetStatus and
    the dashboard name it."""
    sync = s.get("sync")
    if not sync:
        return
    yield _counter(
        "potluck_sync_bytes", "tensor bytes of versions downloaded from holders", sync["downloaded_bytes"]
    )
    yield _counter(
        "potluck_sync_tensors_reused", "tensors a download found already here", sync["tensors_reused"]
    )
    yield _gauge(
        "potluck_sync_progress_bytes", "bytes received for the download under way (0: none)", sync["bytes"]
    )
    yield _gauge(
        "potluck_sync_target_bytes",
        "bytes the download under way needs, as far as its holders told (0: none or not known yet)",
        sync["target_bytes"],
    )
    yield _gauge(
        "potluck_sync_started_timestamp_seconds",
        "unix time the download under way began (0: none)",
        sync["started"],
    )


def defence_metrics(s: Status) -> Iterator[Metric]:
    d = s.get("defence")
    if not d:
        return
    reasons: dict[str, float] = {}
    for ban in d["bans"]:
        reasons[ban["reason"]] = reasons.get(ban["reason"], 0) + 1
    yield _by(
        GaugeMetricFamily("potluck_bans", "authors banned for the run, by reason", labels=["reason"]), reasons
    )
    yield _gauge("potluck_probation_nodes", "authors known to be on probation", len(d["probation"]))
    yield _counter(
        "potluck_equivocations_found", "equivocations this node's validator found", d["equivocations_found"]
    )
    yield _counter(
        "potluck_evidence_verified", "pieces of evidence checked and found good", d["evidence_verified"]
    )


class StatusCollector(Collector):
    """A prometheus_client collector over ``status()``: the GetStatus reply as a dict, or None while the
    node is starting (then only ``potluck_up 0``)."""

    def __init__(self, status: Callable[[], Status | None]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        s = self._status()
        yield _gauge(
            "potluck_up", "1 once the node answers its control API's GetStatus", float(s is not None)
        )
        if s is None:
            return
        for part in (
            node_metrics,
            round_metrics,
            update_metrics,
            traffic_metrics,
            sync_metrics,
            defence_metrics,
        ):
            yield from part(s)


def render(status: Callable[[], Status | None]) -> bytes:
    """The text a scrape gets."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    return generate_latest(registry)
