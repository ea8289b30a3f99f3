"""Building the control API's replies (GetStatus, ListPeers, ListUpdates) from a node's parts.

Read-only: a reply is a snapshot of what the node's services hold; nothing here changes them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from potluck import AGENT
from potluck.defence.service import DefenceService
from potluck.exchange.modules import ModuleExchange
from potluck.exchange.service import UpdateExchange
from potluck.exchange.state import StateService
from potluck.identity import NodeIdentity, node_id_of
from potluck.manifest import is_run_id
from potluck.swarm.host import SwarmHost
from potluck.swarm.membership import LocalState, Membership
from potluck.swarm.validator import RejectionCounters
from potluck.v1 import control_pb2

if TYPE_CHECKING:
    from potluck.engine import RoundEngine


class NodeParts(Protocol):
    """The parts of a running node the replies read (potluck.node.Node has them)."""

    run: str
    started_at: float
    local: LocalState
    rejections: RejectionCounters
    identity: NodeIdentity | None
    host: SwarmHost | None
    membership: Membership | None
    exchange: UpdateExchange | None
    modules: ModuleExchange | None
    state_service: StateService | None
    engine: RoundEngine | None
    defence: DefenceService | None

    @property
    def rpc_address(self) -> str: ...


def status(node: NodeParts) -> control_pb2.GetStatusResponse:
    assert node.identity is not None and node.host is not None and node.membership is not None
    boot = node.host.bootstrap
    fields = dict(
        node_id=node.identity.node_id,
        peer_id=node.identity.peer_id,
        run=node.run,
        agent_version=AGENT,
        listen_addrs=node.host.listen,
        addrs=node.host.addrs,
        uptime_s=time.time() - node.started_at,
        peers=len(node.membership.peers()),
        role=node.local.role,
        round=node.local.round,
        phase="idle",
        model_version=node.local.model_version,
        rejected_records=node.rejections.snapshot(),
        dht_restarts=node.host.dht_restarts,
        bootstrap=control_pb2.Bootstrap(
            state=boot.state,
            initial_peers=boot.initial_peers,
            attempts=boot.attempts,
            last_error=boot.last_error,
            next_retry_in_s=max(0.0, boot.next_retry_at - time.time()) if boot.state == "retrying" else 0.0,
        ),
        rpc_address=node.rpc_address,
        record_ttl_s=node.membership.ttl_s,
    )
    fields |= _update_status(node) | _round_status(node)
    if node.defence is not None:
        fields["defence"] = _defence(node.defence)
    fields["traffic"] = _traffic(node.host)
    if node.state_service is not None:
        fields["sync"] = _sync(node.state_service)
    if node.modules is not None:
        fields["modules"] = control_pb2.Modules(**node.modules.status_fields())
    return control_pb2.GetStatusResponse(**fields)


def _sync(service: StateService) -> control_pb2.Sync:
    p, st = service.progress, service.stats
    return control_pb2.Sync(
        version=p.version,
        started=p.started,
        bytes=p.bytes,
        target_bytes=p.target_bytes,
        downloaded_bytes=st.bytes_downloaded,
        tensors_reused=st.tensors_reused,
    )


def _traffic(host: SwarmHost) -> control_pb2.Traffic:
    t = host.traffic.status()
    return control_pb2.Traffic(
        kernel=t["kernel"],
        total=control_pb2.TrafficBytes(**t["total"]) if t["total"] is not None else None,
        kinds={k: control_pb2.TrafficBytes(**v) for k, v in t["kinds"].items()},
        window_s=t["window_s"],
    )


def _round_status(node: NodeParts) -> dict:
    e = node.engine
    if e is None:
        return {"run_id": node.run if is_run_id(node.run) else "", "committed_round": -1, "accuracy": -1.0}
    return {
        "run_id": e.run_id,
        "round": max(e.status.round, 0),
        "phase": e.status.phase,
        "version": e.version,
        "deadline": e.status.deadline,
        # when collecting ends at the latest (rounds.schedule): earlier under "ready" pacing once the
        # declared updates are in
        "collecting_deadline": e.status.closes_at if e.status.round >= 0 else 0.0,
        "participants": e.status.last_participants,
        "committed_round": e.committed_round,
        "abandoned_rounds": e.status.abandoned_rounds,
        "attempts": e.status.attempts,
        "failed_attempts": e.status.failed_attempts,
        "commits": e.status.commits,
        "version_age_s": time.time() - e.status.version_since if e.status.version_since else 0.0,
        "fork_switches": e.status.fork_switches,
        "accuracy": e.status.accuracy,
        "round_error": e.status.last_error,
        "bad_tensors": node.state_service.stats.bad_tensors if node.state_service else 0,
        "aggregation": _aggregation(e),
    }


def _aggregation(engine: RoundEngine) -> control_pb2.Aggregation:
    st = engine.status
    return control_pb2.Aggregation(
        strategy=engine.manifest.strategy,
        placement=engine.placement,
        placement_policy=engine.manifest.placement,
        placement_reason=st.placement_reason,
        audited_slices=st.audited_slices,
        audited_coordinates=st.audited_coordinates,
        convicted=[
            control_pb2.Conviction(
                node_id=node, round=round_, fault_id=fault, why=st.convicted_why.get(node, "")
            )
            for node, (round_, fault) in sorted(st.convicted.items())
        ],
        convictions=dict(st.convictions),
        bad_faults=st.bad_faults,
        bad_faults_by_reason=dict(st.bad_faults_by),
        last_merge_s=st.last_merge_s,
        audited_sums=st.audited_sums,
        unaudited_sums=st.unaudited_sums,
        pacing=engine.manifest.pacing,
        close_reason=st.close_reason,
        waiting_for=engine.waiting_for,
        last_phases=st.last_phases,
        damped=st.damped,
        probe_excluded=st.probe_excluded,
        probe_counts=st.probe_counts,
        commit_seconds=control_pb2.Histogram(
            bounds=st.commit_seconds.bounds,
            counts=st.commit_seconds.counts,
            sum=st.commit_seconds.sum,
            count=st.commit_seconds.count,
        ),
    )


def _update_status(node: NodeParts) -> dict:
    x = node.exchange
    if x is None:
        return {"base_version": node.local.model_version, "accuracy": -1.0}
    counters = x.validator.counters
    published = [u for u in x.held.values() if u.source == "published"]
    return {
        "accepted_updates": counters["accepted"],
        "held_updates": len(x.held),
        "rejected_updates": {reason: n for reason, n in counters.items() if reason != "accepted"},
        "bad_holder_fetches": x.bad_holder_fetches,
        "fetched_updates": x.fetched,
        "published_updates": len(published),
        "published_bytes": sum(u.size for u in published),
        "base_version": node.local.model_version,
    }


def _defence(defence: DefenceService) -> control_pb2.Defence:
    d = defence.status_fields()
    return control_pb2.Defence(
        bans=[control_pb2.Ban(**b) for b in d.pop("bans")],
        probation=[control_pb2.Probation(**p) for p in d.pop("probation")],
        **d,
    )


def _peer_defence(defence: DefenceService | None, node_id: str) -> dict:
    if defence is None:
        return {}
    ban = defence.ban_of(node_id)
    return {
        "banned": ban is not None,
        "ban_reason": ban.reason if ban is not None else "",
        "probation_rounds_left": defence.rounds_left(node_id) if ban is None else 0,
    }


def list_peers(node: NodeParts) -> control_pb2.ListPeersResponse:
    assert node.membership is not None
    return control_pb2.ListPeersResponse(
        peers=[
            control_pb2.Peer(
                node_id=p.node_id,
                peer_id=p.record.peer_id,
                addrs=p.record.addrs,
                role=p.record.role,
                agent_version=p.record.agent,
                last_seen=p.record.timestamp,
                expires_at=p.expires_at,
                round=p.record.round,
                model_version=p.record.model_version,
                sequence=p.record.sequence,
                **_peer_defence(node.defence, p.node_id),
            )
            for p in node.membership.peers()
        ]
    )


def list_updates(node: NodeParts) -> control_pb2.ListUpdatesResponse:
    if node.exchange is None:
        return control_pb2.ListUpdatesResponse()
    held = sorted(node.exchange.held.values(), key=lambda u: (-u.round, u.update_id))
    return control_pb2.ListUpdatesResponse(
        updates=[
            control_pb2.UpdateInfo(
                update_id=u.update_id,
                author=node_id_of(u.author),
                round=u.round,
                seq=u.seq,
                size=u.size,
                sample_count=u.sample_count,
                base=u.base,
                source=u.source,
            )
            for u in held
        ]
    )
