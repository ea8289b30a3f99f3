"""A contributor: a node that also trains. Each round it trains on its own data from V_r, turns the
change into a signed sparse update (top-k with error feedback; or, with ``lowrank``, trains LoRA
adapters and sends their factors, and with ``lowrank_extras`` chosen other tensors trained whole
beside them, every entry, in the same update), leaving out tensors of frozen parameter groups, and hands it
to its node's one publish path (Node.publish), which validates, holds and announces it like any
other update, or pushes it to keepers when the node runs in client mode. What it needs of the node
is ContributingNode. Where the task's ``train`` takes an ``optimizer`` dict (the lm task), the contributor
hands it the same dict every round: its optimizer's state carries over rounds (``--fresh-optimizer``
restarts it from each V_r instead).

Training runs in a worker thread, so the node keeps serving peers and the control API meanwhile.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol

import numpy as np

from potluck.errors import ConfigError
from potluck.identity import NodeIdentity
from potluck.manifest import Manifest
from potluck.node import NO_KEEPER, OpenRound
from potluck.store.versions import VersionStore
from potluck.tasks import TaskError, TrainableTask, get_task, is_trainable
from potluck.updates.codec import Update, encode_update
from potluck.updates.lowrank import LowRankTensor, balance
from potluck.updates.sparsify import ErrorFeedback, scheduled_density
from potluck.v1 import control_pb2

logger = logging.getLogger(__name__)


class StopTraining(Exception):
    """Raised from the progress callback: leave after the current step."""


@dataclass
class ContributorStats:
    rounds_contributed: int = 0
    rounds_missed: int = 0
    bytes_sent: int = 0
    last_round: int = -1


class Progress:
    """A one-line progress bar on stderr when it is a terminal; a log line per quarter otherwise."""

    def __init__(self, label: str, total: int, stream=sys.stderr):
        self.label, self.total, self.stream = label, total, stream
        self.tty = stream.isatty()
        self._last_quarter = -1

    def __call__(self, done: int) -> None:
        if self.tty:
            filled = int(30 * done / max(self.total, 1))
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}")
            if done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif (quarter := 4 * done // max(self.total, 1)) != self._last_quarter:
            self._last_quarter = quarter
            logger.info(f"{self.label}: {done}/{self.total} steps")


class ContributingNode(Protocol):
    """What a contributor needs of its node (potluck.node.Node): the run it joined, the round open for
    updates, and the one path an update leaves by (Node.publish: validate, hold, announce or push)."""

    identity: NodeIdentity | None
    versions: VersionStore

    async def joined(self, timeout: float) -> Manifest: ...
    def open_round(self) -> OpenRound | None: ...
    def round_settled(self, r: int) -> bool: ...
    def current_version(self) -> str: ...
    def authored(self, r: int) -> bool: ...
    async def declare(self, r: int, version: str) -> None: ...
    def takes_late(self, r: int, version: str) -> bool: ...
    async def publish(self, data: bytes) -> control_pb2.PublishUpdateResponse: ...


def read_only(a: np.ndarray) -> np.ndarray:
    """A view of ``a`` that refuses writes (a task that trained in place would raise, not corrupt V_r)."""
    view = a.view()
    view.flags.writeable = False
    return view


def takes_optimizer(train: Callable) -> bool:
    """Whether a task's ``train`` (or ``train_lowrank``) takes an ``optimizer`` dict to carry its
    optimizer's state between calls."""
    return "optimizer" in inspect.signature(train).parameters


class Contributor:
    def __init__(self, node: ContributingNode, *, task_spec: str | None, shard: str | None, local_steps: int,
                 seed: int, max_rounds: int | None = None, join_timeout: float = 60.0,
                 lowrank: int | None = None, lowrank_targets: str = "*", lowrank_extras: str = "",
                 keep_optimizer: bool = True, salience: float = 0.0,
                 residual_decay: float = 1.0):  # fmt: skip
        """``lowrank``: train rank-``lowrank`` LoRA adapters on the 2-D tensors matching the glob
        ``lowrank_targets`` (the task needs ``train_lowrank``) and publish their factors instead.
        ``lowrank_extras``: with ``lowrank``, also train the other (unfrozen) tensors matching this glob
        whole beside the adapters (e.g. ``*``: the biases and LayerNorms) and send every entry of their
        deltas, in the run's value format with error feedback, in the same update as the factors.
        ``keep_optimizer``: where the task's ``train`` takes an ``optimizer`` dict (the lm task's),
        hand it the same one every round, so its optimizer's state (Adam's moments) carries over
        rounds instead of restarting from each V_r; it stays on this machine, never in an update.
        ``salience``: rank the sparse top-k by ``|residual| * g ** salience``, ``g`` the kept optimizer's
        per-entry gradient scale (the task's ``gradient_scale``), instead of by ``|residual|`` (0):
        entries where the loss is more sensitive go first (bench/README.md#lm); the wire is unchanged.
        ``residual_decay``: the sparse error feedback's residual is multiplied by it each round
        (``ErrorFeedback.decay``; 1: nothing unsent is dropped); also only the sender's choice."""
        self._node = node
        self._optimizer: dict | None = {} if keep_optimizer else None
        self._lowrank, self._lowrank_targets, self._lowrank_extras = lowrank, lowrank_targets, lowrank_extras
        self._task_spec, self._shard, self._steps, self._seed = task_spec, shard, local_steps, seed
        self._max_rounds = max_rounds
        if not (salience >= 0 and np.isfinite(salience)):
            raise ConfigError(f"--salience must be a finite number >= 0, got {salience}")
        self._salience = salience
        if not 0 < residual_decay <= 1:
            raise ConfigError(f"--residual-decay must be in (0, 1], got {residual_decay}")
        self._residual_decay = residual_decay
        self._join_timeout = join_timeout
        self.stats = ContributorStats()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def _check_task(self, manifest: Manifest) -> TrainableTask:
        if self._task_spec is not None and self._task_spec != manifest.task:
            raise ConfigError(f"this run trains task {manifest.task!r}, not {self._task_spec!r}")
        try:
            task = get_task(manifest.task, manifest.task_args)
        except TaskError as e:
            raise ConfigError(f"cannot load the run's task: {e}") from None
        if not is_trainable(task):
            raise ConfigError(f"task {manifest.task!r} cannot train (it has no local_data/train/evaluate)")
        genesis = self._node.versions.get(manifest.genesis)
        mine = task.init_state(manifest.seed)
        if {k: v.shape for k, v in mine.items()} != {k: v.shape for k, v in genesis.items()}:
            raise ConfigError(f"task {manifest.task!r} here builds a different model than the run's genesis")
        return task

    def _adapted(self, manifest: Manifest, task: TrainableTask) -> list[str]:
        """The tensors ``--lowrank`` adapts, or a ConfigError saying why it cannot."""
        if self._lowrank is None:
            return []
        if not callable(getattr(task, "train_lowrank", None)):
            raise ConfigError(f"task {manifest.task!r} cannot train low-rank adapters (no train_lowrank)")
        shapes = {k: v.shape for k, v in self._node.versions.get(manifest.genesis).items()}
        groups = manifest.group_rules
        frozen = groups.frozen(shapes)
        targets = [n for n in sorted(shapes) if fnmatchcase(n, self._lowrank_targets) and n not in frozen]
        targets = [n for n in targets if len(shapes[n]) == 2]
        if not targets:
            raise ConfigError(f"--lowrank-targets {self._lowrank_targets!r} matches no unfrozen 2-D tensor")
        limits = groups.limits(targets, "max_rank")
        for name in targets:
            limit = min(int(limits.get(name, manifest.max_rank)), *shapes[name])
            if self._lowrank > limit:
                raise ConfigError(f"--lowrank {self._lowrank} is above the limit {limit} for {name}")
        return targets

    def _extras(self, manifest: Manifest, task: TrainableTask, targets: list[str]) -> list[str]:
        """The tensors ``--lowrank-extras`` trains whole beside the adapters (none without it)."""
        if not self._lowrank_extras:
            return []
        if "extras" not in inspect.signature(task.train_lowrank).parameters:  # type: ignore[attr-defined]
            raise ConfigError(f"task {manifest.task!r} cannot train tensors beside its adapters (no extras)")
        state = self._node.versions.get(manifest.genesis)
        frozen = manifest.group_rules.frozen(list(state))
        extras = [n for n in sorted(state) if fnmatchcase(n, self._lowrank_extras) and n not in targets
                  and n not in frozen and np.issubdtype(state[n].dtype, np.floating)]  # fmt: skip
        if not extras:
            raise ConfigError(
                f"--lowrank-extras {self._lowrank_extras!r} matches no unfrozen tensor to train"
            )
        return extras

    async def run(self) -> None:
        """Contribute every round until stopped (or after ``max_rounds`` contributions)."""
        node = self._node
        manifest = await node.joined(self._join_timeout)  # joined by run id: the manifest is on its way
        task = self._check_task(manifest)
        try:
            data = await asyncio.to_thread(task.local_data, self._shard, self._seed)
        except TaskError as e:
            raise ConfigError(str(e)) from None
        targets = self._adapted(manifest, task)
        extras = self._extras(manifest, task, targets)
        lowrank_args = {"extras": extras} if extras else {}
        train = task.train_lowrank if targets else task.train  # type: ignore[attr-defined]
        kept = (
            {"optimizer": self._optimizer} if self._optimizer is not None and takes_optimizer(train) else {}
        )
        names = list(self._node.versions.get(manifest.genesis))
        if self._salience and (targets or "optimizer" not in kept or not hasattr(task, "gradient_scale")):
            raise ConfigError(
                "--salience needs whole-model training that keeps its optimizer state (not --lowrank or "
                "--fresh-optimizer) and a task with gradient_scale"
            )
        if self._residual_decay != 1 and targets:
            raise ConfigError("--residual-decay applies to sparse patches, not --lowrank")
        frozen = manifest.group_rules.frozen(names)
        feedback = ErrorFeedback(manifest.density, manifest.values, manifest.topk_scope)
        feedback.decay = self._residual_decay
        limits = manifest.group_rules.limits(names, "max_density")
        schedule = (manifest.density, manifest.start_density, manifest.start_rounds)
        # --lowrank-extras: every entry of their deltas (a group's max_density still bounds them)
        whole = ErrorFeedback(1.0, manifest.values)
        whole.densities = {n: d for n, d in limits.items() if d < 1.0}
        declared_ahead = -1  # the round we declared for as we published the one before
        identity = node.identity
        assert identity is not None
        while not self._stop.is_set():
            if self._max_rounds is not None and self.stats.rounds_contributed >= self._max_rounds:
                # stay until our last update is merged (or its round is over), then leave
                if node.round_settled(self.stats.last_round):
                    return
                await asyncio.sleep(0.05)
                continue
            opened = node.open_round()
            if opened is None or opened.round <= self.stats.last_round:
                await asyncio.sleep(0.05)
                continue
            r = opened.round
            if node.authored(r):
                self.stats.last_round = r  # published before a restart: a second update would be equivocation
                continue
            # the node's V_r itself, read-only: a version's arrays are never written (later versions
            # share the unchanged ones), so no copy of the model is needed beside the one training makes
            base_version, base_state = opened.version, {k: read_only(v) for k, v in opened.state.items()}
            self.stats.last_round = r
            if r != declared_ahead:  # declared with our last update already
                await node.declare(r, base_version)
            progress = Progress(f"round {r}: training", self._steps)

            def step(done: int, progress: Callable[[int], None] = progress) -> None:
                progress(done)
                if self._stop.is_set():
                    raise StopTraining

            seed = self._seed * 100_003 + r
            try:
                if targets:
                    factors, samples = await asyncio.to_thread(
                        task.train_lowrank, base_state, data, steps=self._steps, seed=seed,  # type: ignore[attr-defined]
                        rank=self._lowrank, targets=targets, progress=step, **kept, **lowrank_args,
                    )  # fmt: skip
                else:
                    trained, samples = await asyncio.to_thread(
                        task.train, base_state, data, steps=self._steps, seed=seed, progress=step, **kept
                    )
            except StopTraining:
                logger.info("stopped after the current training step")
                return
            if not node.takes_late(r, base_version) and (
                node.current_version() != base_version or time.time() >= opened.closes_at
            ):
                self.stats.rounds_missed += 1
                logger.warning(
                    f"round {r}: training finished too late for the round; re-syncing to the next one"
                )
                continue
            if targets:
                tensors: list = [
                    LowRankTensor(n, base_state[n].shape, *balance(*factors[n])) for n in targets
                ]
                if extras:  # the same update carries their sparse entries (docs/update-format.md)
                    tensors += await asyncio.to_thread(whole.compress, {n: factors[n] for n in extras})
            else:
                delta = {k: np.subtract(trained[k], base_state[k], dtype=np.float32) for k in base_state
                         if np.issubdtype(base_state[k].dtype, np.floating) and k not in frozen}  # fmt: skip
                feedback.density = scheduled_density(r, *schedule)  # a sparse start, if the run has one
                # a group's max_density below the round's density bounds its tensors' top-k
                feedback.densities = {n: d for n, d in limits.items() if d < feedback.density}
                if self._salience:  # the top-k by |residual| * gradient scale ** s (the wire is unchanged)
                    scales = task.gradient_scale(self._optimizer)  # type: ignore[attr-defined]
                    feedback.weights = {n: g**self._salience for n, g in scales.items() if n in delta}
                tensors = await asyncio.to_thread(feedback.compress, delta)
                del trained, delta  # two models' worth that would otherwise live through the next training
            update = Update(manifest.run_id, r, base_version, identity.public_key, time.time_ns() // 1000,
                            int(samples), tuple(tensors))  # fmt: skip
            data_bytes = await asyncio.to_thread(encode_update, update, identity, manifest.values)
            reply = await node.publish(data_bytes)
            if reply.reason == NO_KEEPER:
                self.stats.rounds_missed += 1
                logger.warning(f"round {r}: {reply.detail}")
                continue
            if not reply.accepted:
                logger.warning(f"round {r}: our own update was rejected: {reply.reason}: {reply.detail}")
                continue
            self.stats.rounds_contributed += 1
            if self._max_rounds is None or self.stats.rounds_contributed < self._max_rounds:
                # say now that we train for the next round too: it must not close on the contributors
                # that happen to see its base first (the declaration names the base we had)
                await node.declare(r + 1, base_version)
                declared_ahead = r + 1
            self.stats.bytes_sent += len(data_bytes)
            kind = (
                f"rank-{self._lowrank} factors" + (f" and {len(extras)} whole tensors" if extras else "")
                if targets
                else f"residual norm {feedback.residual_norm():.3g}"
            )
            logger.info(
                f"round {r}: published {reply.update_id[:12]} ({len(data_bytes)} bytes, {samples} samples, "
                f"{kind})"
            )
