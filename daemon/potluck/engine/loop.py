"""The round loop: every round, the run's keepers turn the round's accepted updates into one agreed,
signed, content-addressed version.

Per round r (times from rounds/schedule.py, derived from the manifest alone):

collecting    updates against V_r are validated and held by the exchange (exchange/service.py). Under
              "clock" pacing until the round's fixed aggregation start; under "ready" pacing until
              engine/closing.py decides, from signed declarations and entries, that what the round
              waits for is in (late updates, onto V_{r-1} and not merged in it, count in round r).
aggregating   for attempt a = 0, 1, ... while the round's aggregation window lasts:
  1. freeze: publish a signed entry (held update ids) and read everyone's (engine/entries.py);
  2. derive the same assignment as everyone else: each update carried by exactly one holder; a
     retry merges only updates a majority holds (rounds/entries.py);
  3. merge in the attempt's placement (engine/placing.py), which returns the merged version or
     fails the attempt;
  4. commit: sign, collect the manifest's quorum of signatures, store the version and the history
     row (engine/commit.py).
Under "clock" pacing a round without updates commits nothing (V_{r+1} = V_r); under "ready" pacing it
stays open, and a round whose attempts all failed opens again (its next series of attempts numbered
from SERIES_STRIDE * series). Between rounds, and before each, the engine catches up to a newer (or,
after a split, the winning) committed version of its peers, at once when one pushes its commit to us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import numpy as np

from potluck.defence.service import DefenceService
from potluck.engine.allreduce import MATCHMAKING_S
from potluck.engine.attempt import Attempt, AttemptFailed, RoundStatus, abandoned, sleep_until
from potluck.engine.closing import Carried, Closer, carried, eligible
from potluck.engine.commit import Committer, commits_key
from potluck.engine.conduct import Conduct, current
from potluck.engine.entries import ENTRY_GRACE_S, ENTRY_WINDOW_S, EntryBoard
from potluck.engine.evaluation import Evaluator
from potluck.engine.faults import Faults
from potluck.engine.history import RoundHistory
from potluck.engine.placing import Placer
from potluck.engine.updates import AcceptedUpdates
from potluck.exchange.dense import DenseService
from potluck.exchange.service import HeldUpdate
from potluck.exchange.slices import SliceService
from potluck.exchange.state import StateService
from potluck.identity import NodeIdentity
from potluck.manifest import Manifest
from potluck.merge import DEFAULT_STRATEGY, StrategyError, get_strategy
from potluck.merge.probe import ProbeRule
from potluck.rounds import fixedpoint, placement, schedule
from potluck.rounds.commit import Commit
from potluck.rounds.entries import agreement_digest, assign, retry_holders, senior_ids
from potluck.rounds.merging import run_merge
from potluck.store.history import History
from potluck.store.versions import VersionStore
from potluck.swarm.bulletin import Bulletin
from potluck.swarm.host import SwarmHost
from potluck.swarm.membership import LocalState, PeerInfo
from potluck.tasks import TrainableTask

logger = logging.getLogger(__name__)

PREP_PARAMS_PER_S = 4e6  # contribution + pack speed measured on 2 cores: large models need longer to prepare
MIN_ATTEMPT_S = 3.5  # entries (1 s) + matchmaking (1.5 s) + all-reduce and signatures of a small model
CATCH_UP_PERIOD_S = 2.0
SERIES_STRIDE = 16  # "ready" pacing: attempt indices of a round's n-th series start at n * SERIES_STRIDE


class RoundEngine:
    """Public: ``status``, ``manifest``, ``placement``, the current ``version``/``state``/
    ``committed_round``, ``start``/``stop`` and ``catch_up``. ``conduct`` is the seam for a
    test's adversary (engine/conduct.py); None is the honest node."""

    def __init__(
        self,
        *,
        host: SwarmHost,
        bulletin: Bulletin,
        identity: NodeIdentity,
        manifest: Manifest,
        versions: VersionStore,
        history: History,
        exchange: AcceptedUpdates,
        local: LocalState,
        state_service: StateService,
        peers: Callable[[], list[PeerInfo]],
        on_new_version: Callable[[], None],
        restore_signals: Callable[[], None],
        task: TrainableTask | None = None,
        aggregates: bool = True,
        slice_service: SliceService | None = None,
        dense_service: DenseService | None = None,
        defence: DefenceService | None = None,
        conduct: Conduct | None = None,
        probe: ProbeRule | None = None,
    ):
        self._host, self.manifest, self.run_id = host, manifest, manifest.run_id
        self._history, self._exchange, self._local = history, exchange, local
        self._on_new_version = on_new_version
        # a client-mode node only follows: nobody can dial it for the all-reduce
        self._aggregates = aggregates
        conduct = conduct if conduct is not None else current()
        self.status = RoundStatus()
        latest = history.latest()
        self.version = latest.version if latest is not None else manifest.genesis
        self.committed_round = latest.round if latest is not None else -1
        self.state = versions.get(self.version)
        self.layout = fixedpoint.Layout.from_state(self.state)
        # same on every node (same layout): when the all-reduce starts after an attempt's start
        self.prep_s = ENTRY_WINDOW_S + ENTRY_GRACE_S + MATCHMAKING_S + self.layout.length / PREP_PARAMS_PER_S
        # where this run's strategy may merge: rounds/merging.py (run_merge), rounds/placement.py (allowed)
        assert bool(manifest.probe) == (probe is not None), "the node loads it: potluck.tasks.probing"
        how = run_merge(manifest.strategy, manifest.strategy_args, manifest.group_rules, probe)
        self._strategy, self._mean = how.strategy, how.mean
        self._sliceable = slice_service is not None and how.coordinate
        policy = (manifest.placement, how.spread_mean, self._sliceable, repr(manifest.strategy), how.history)
        try:
            placement.check_policy(*policy, probe is not None)
        except placement.PlacementError as e:
            raise StrategyError(str(e)) from None
        # a 50M-parameter model's dense preparation (~12 s) would not leave a 60 s round's 15 s window
        # room for one attempt: only runs that may need it make their attempts that long
        self._dense_prep = placement.dense_prep(*policy[:3], max(manifest.density, manifest.start_density))
        # a run that may slice convicts lying reducers
        self._convicts = self._sliceable
        column_strategy = self._strategy if self._sliceable else get_strategy(DEFAULT_STRATEGY, {})
        self._faults = Faults(
            host=host, manifest=manifest, layout=self.layout, strategy=column_strategy, exchange=exchange,
            status=self.status, defence=defence,
        )  # fmt: skip
        self._entries = EntryBoard(
            bulletin=bulletin, identity=identity, run_id=self.run_id, peers=peers, conduct=conduct,
            excluded=self._faults.excluded, defence=defence, still_open=lambda r: self.committed_round < r,
        )  # fmt: skip
        self._closer = Closer(
            bulletin=bulletin, manifest=manifest, me=identity.public_key, excluded=self._faults.excluded
        )
        self._placer = Placer(
            strategy=self._strategy, column_strategy=column_strategy, mean=self._mean,
            sliceable=self._sliceable, host=host, identity=identity, exchange=exchange, conduct=conduct,
            status=self.status, peers=peers, restore_signals=restore_signals, prep_s=self.prep_s,
            faults=self._faults, slice_service=slice_service, dense_service=dense_service,
            data_dir=history.path.parent, probe=probe,
            history=RoundHistory(manifest=manifest, rounds=how.history, history=history, versions=versions,
                                 state_service=state_service, peers=peers) if how.history or how.keeps_record
            else None,
        )  # fmt: skip
        self._committer = Committer(
            bulletin=bulletin, identity=identity, manifest=manifest, versions=versions, history=history,
            state_service=state_service, peers=peers, status=self.status, on_committed=self._committed,
        )  # fmt: skip
        self._tried = 0  # attempts the last series made (for the abandoned round's message)
        self._evaluator = Evaluator(
            task, history, self.status, lambda: (self.version, self.state, self.committed_round)
        )
        self._loop_task: asyncio.Task | None = None
        # "ready" pacing: round -> (version, when it opened here, its series of attempts so far)
        self._open: dict[int, tuple[str, float, int]] = {}
        self._carried: Carried | None = None  # V_r's parent and the updates V_r merged ("ready" pacing)
        self._wake = asyncio.Event()  # a commit was pushed to us: catch up now
        commits = commits_key(self.run_id, 0)[:-1]
        bulletin.on_post(lambda key: key.startswith(commits) and self._wake.set())

    @property
    def waiting_for(self) -> int:
        """ "ready" pacing: declared contributors whose update this node does not hold yet."""
        return self._closer.waiting_for if self.status.phase == "collecting" else 0

    @property
    def placement(self) -> str:
        """The placement the last attempt ran (rounds/placement.py), or the manifest's policy before one."""
        return self.status.placement or self.manifest.placement

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._publish_version()
        self._placer.prepare(self.manifest.placement)
        self._loop_task = asyncio.create_task(self._run_forever(), name="round-engine")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
        await self._evaluator.stop()

    async def catch_up(self) -> bool:
        """Move to the run's winning history when peers report another committed version (commit.py)."""
        return await self._committer.catch_up(self.version, self.committed_round, self.state)

    def _committed(self, commit: Commit, state: dict[str, np.ndarray]) -> None:
        """A commit persisted (ours or caught up to; called off the loop): it is our V from now on."""
        self.state, self.version, self.committed_round = state, commit.version, commit.round
        self.status.commits += 1
        self._host.call_soon(self._publish_version)

    def _publish_version(self) -> None:
        """Tell the exchange and our peer record which version updates must be based on."""
        self.status.accuracy, self.status.version_since = -1.0, time.time()
        self._evaluator.soon()
        self._local.model_version = self.version
        self._local.round = max(self.committed_round + 1, 0)
        round_ = max(self.status.round, self.committed_round + 1, 0)
        commit = self._history.get(self.committed_round) if self.committed_round >= 0 else None
        self._carried = carried(self.manifest, commit, self.version)
        self._exchange.set_context(round=round_, known_bases=self.known_bases())
        self._on_new_version()

    def known_bases(self) -> frozenset[str]:
        """The versions updates may be based on: V_r, and under "ready" pacing V_{r-1} (late updates)."""
        return frozenset({self.version} | ({self._carried.parent} if self._carried else set()))

    def _eligible(self, r: int) -> list[HeldUpdate]:
        return eligible(self._exchange, r, self.version, self._carried)

    # ---- the loop ----------------------------------------------------------------------------------

    async def _run_forever(self) -> None:
        m = self.manifest
        while True:
            self._wake.clear()  # whatever was pushed so far, this catch-up sees
            if m.pacing != "ready" and time.time() >= m.start_time:
                self._follow_clock(schedule.round_at(m, time.time()))
            try:
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.status.last_error = f"catching up: {type(e).__name__}: {e}"
                logger.warning(self.status.last_error)
            now = time.time()
            try:
                if now < m.start_time:
                    self.status.phase = "waiting"
                    await self._nap(min(now + 1.0, m.start_time))
                elif m.pacing == "ready":
                    await self._ready_round()
                else:
                    await self._clock_round(now)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug must not stop the rounds: say it, pause, go on
                self.status.last_error = f"round loop: bug: {type(e).__name__}: {e}"
                logger.exception(self.status.last_error)
                await asyncio.sleep(CATCH_UP_PERIOD_S)

    async def _nap(self, until: float) -> None:
        """Sleep until ``until``, or until a peer pushes a commit to us (then we catch up at once)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.0, until - time.time()))
        self._wake.clear()

    def _follow_clock(self, r: int) -> None:
        """Round ``r`` began by the clock: take its updates now, even while a catch-up holds the loop."""
        self.status.round, self.status.deadline = r, schedule.deadline(self.manifest, r)
        self.status.closes_at = schedule.aggregation_start(self.manifest, r)
        self._exchange.set_context(round=max(r, self.committed_round + 1), known_bases=self.known_bases())

    async def _clock_round(self, now: float) -> None:
        m = self.manifest
        r = schedule.round_at(m, now)
        self._follow_clock(r)
        if self.committed_round >= r:  # V_{r+1} is already here (synced, or committed)
            self.status.phase = "committed"
            await self._nap(min(schedule.deadline(m, r), now + CATCH_UP_PERIOD_S))
            return
        agg_start = schedule.aggregation_start(m, r)
        if now < agg_start:
            self.status.phase = "collecting"
            await self._nap(min(agg_start, now + CATCH_UP_PERIOD_S))
            return
        if not self._aggregates:
            self.status.phase = "following"  # the keepers aggregate; we catch up to their commit
            await self._nap(min(schedule.deadline(m, r), time.time() + CATCH_UP_PERIOD_S))
            return
        self.status.phase = "aggregating"
        end = schedule.deadline(m, r)
        if not await self._aggregate_round(r, agg_start, end, 0):
            self._abandon(r, agg_start, end)
        await sleep_until(end)

    async def _ready_round(self) -> None:
        """One step of "ready" pacing: round r = the one after our version, open until closing.py
        says it closes; then its attempts (module docstring)."""
        m = self.manifest
        r = self.committed_round + 1
        version, opened, series = self._open.get(r, ("", 0.0, 0))
        if version != self.version:  # V_r is new here: the round opens now
            self._open = {r: (self.version, time.time(), 0)}
            self._closer.forget_before(r)
            version, opened, series = self._open[r]
        self.status.round, self.status.deadline = r, opened + m.round_seconds
        self.status.closes_at = opened + schedule.collecting_seconds(m)
        self._exchange.set_context(round=r, known_bases=self.known_bases())
        self.status.phase = "collecting" if self._aggregates else "following"
        if not self._aggregates:  # the keepers aggregate; we catch up to their commit
            await self._nap(time.time() + CATCH_UP_PERIOD_S)
            return
        first = series * SERIES_STRIDE
        reason = await self._closer.wait(
            r, self.version, opened, lambda: self._eligible(r), CATCH_UP_PERIOD_S, first=first,
            bases=self.known_bases(),
        )  # fmt: skip
        if reason is None or self._wake.is_set():  # a commit was pushed meanwhile: catch up first
            return
        self.status.phase, self.status.close_reason = "aggregating", reason
        logger.info(f"round {r} closed after {time.time() - opened:.2f} s: {reason}")
        start = time.time()
        # no grid to keep to: short rounds still give their attempts the time they need
        end = start + max(schedule.aggregation_seconds(m), 3 * self._min_attempt())
        if not await self._aggregate_round(r, start, end, first):
            self._abandon(r, start, end)
            self._open[r] = (version, time.time(), series + 1)  # it opens again, with a new series

    async def _aggregate_round(self, r: int, agg_start: float, end: float, first_index: int) -> bool:
        """Attempts first_index, first_index + 1, ... from ``agg_start`` while they fit before ``end``;
        True once one settles the round."""
        min_attempt = self._min_attempt()
        attempt_s = max(min_attempt, (end - agg_start) / 3)
        attempt = 0
        while True:
            start = agg_start + attempt * attempt_s
            if start + min_attempt > end:
                break
            await sleep_until(start)
            self.status.attempts += 1
            self._placer.ran = ""  # which placement this attempt ran, for its error line
            index = first_index + attempt
            try:
                last = start + attempt_s + min_attempt > end  # no retry fits: this one may use the whole rest
                if await self._attempt(r, index, start, end if last else start + attempt_s):
                    return True
            except AttemptFailed as e:
                where = f" ({self._placer.ran})" if self._placer.ran else ""
                self.status.last_error = f"round {r} attempt {index}{where}: {e}"
                self.status.failed_attempts += 1
                logger.warning(self.status.last_error)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug in one attempt must not end the node
                self.status.last_error = f"round {r} attempt {index}: bug: {type(e).__name__}: {e}"
                self.status.failed_attempts += 1
                logger.exception(self.status.last_error)
            attempt += 1
        self._tried = attempt
        return False

    def _min_attempt(self) -> float:
        return MIN_ATTEMPT_S + (self.layout.length / PREP_PARAMS_PER_S if self._dense_prep else 0.0)

    def _abandon(self, r: int, agg_start: float, end: float) -> None:
        min_attempt = self._min_attempt()
        self.status.abandoned_rounds += 1
        window = end - agg_start
        self.status.last_error = abandoned(r, self._tried, self.status.last_error, window, min_attempt)
        logger.warning(self.status.last_error)

    async def _attempt(self, r: int, attempt: int, start: float, until: float) -> bool:
        """One aggregation attempt; True when round r is settled (committed, or nothing to commit)."""
        # a previous attempt that overran (hivemind's matchmaking can outlast its timeout) makes every
        # participant late alike: each then gives the entries a whole window from its own late start
        entered = max(start, time.time())
        # while the entries gather: learn of convicted reducers, so that none takes part (a run whose
        # attempts all merge gathered has no reducers: no DHT read for faults each attempt)
        learn = self._faults.learn if self._convicts and self._dense_prep else None
        held = sorted(u.update_id for u in self._eligible(r))
        entries = await self._entries.freeze(
            r, attempt, self.version, start, entered, held, learn, early=not self._dense_prep
        )
        # without the updates any entry excludes (banned authors); a retry merges only updates that a
        # majority holds, so an id nobody can fetch (a phantom) cannot stall the round's every attempt
        assignment = assign(entries, 1 if attempt == 0 else retry_holders(len(entries)))
        merge_started = time.time()
        if not assignment:
            logger.info(f"round {r}: no updates; the version stays {self.version[:12]}")
            return self.manifest.pacing == "clock"  # a "ready" round stays open for its first update
        a = Attempt(
            self.manifest, r, attempt, self.version, self.state, self.layout, entries, assignment,
            frozenset(senior_ids(entries)), agreement_digest(entries), entered, until,
        )  # fmt: skip
        merged = await self._placer.merge(a)
        committing = time.time()
        self.status.last_merge_s = committing - merge_started
        await self._committer.commit(a, merged)
        # where an attempt's time goes (issue: attempts that fit short rounds), for status and the log
        self.status.committed({
            "entries": merge_started - entered, "merge": self.status.last_merge_s,
            "commit": time.time() - committing,
        })  # fmt: skip
        logger.info(
            f"round {r} attempt {attempt}: "
            + ", ".join(f"{k} {v:.3f} s" for k, v in self.status.last_phases.items())
        )
        return True
