"""A module contributor (`potluck join --module NAME`): a node that trains one named module (an adapter
and its routing gate, docs/modules.md) on its own text, from the version the run collects updates on
when it joins (the run's current agreed version), signs it with the node's key, and keeps it through
the node's module exchange (potluck.exchange.modules), which announces it to the run's peers at once
and serves it to them. Then, given a patch contributor (``--patches``), it also contributes patches
every round (potluck.contribute); without one it stays up, serving the module, until stopped.

A name this node already knows to be another author's (kept from them, or claimed first by them in
a claim seen so far) is refused before training; the record is checked again as it is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from potluck.contribute import Progress, StopTraining
from potluck.errors import ConfigError
from potluck.exchange.modules import ModuleExchange, Trunk, trunk_of
from potluck.identity import NodeIdentity, node_id_of
from potluck.lifecycle import Worker
from potluck.manifest import Manifest
from potluck.modules.record import Module, ModuleRefused, module_id, sign_module
from potluck.node import OpenRound
from potluck.tasks import TaskError, get_task
from potluck.tasks.lm_modules import default_targets, train_module

logger = logging.getLogger(__name__)

WAIT_S = 0.1
CLAIMS_READ_S = 10.0  # reading the run's module announcements once before training


class ModuleNode(Protocol):
    """What a module contributor needs of its node (potluck.node.Node)."""

    identity: NodeIdentity | None
    modules: ModuleExchange | None

    async def joined(self, timeout: float) -> Manifest: ...
    def open_round(self) -> OpenRound | None: ...


@dataclass(frozen=True)
class ModuleSpec:
    """The module to train: its name, text (an lm shard spec), adapter steps, gate steps, rank."""

    name: str
    shard: str
    steps: int = 100
    gate_steps: int = 200
    rank: int = 4
    seed: int = 0
    description: str = ""
    task: str | None = None  # the task the joiner expects (`join --task`): refused if the run trains another


def check_rank(rank: int, trunk: Trunk, targets: list[str]) -> None:
    """ConfigError if ``rank`` is above the run's max_rank or an adapted tensor's smaller side."""
    limit = min(trunk.max_rank, *(min(trunk.shapes[t]) for t in targets))
    if rank > limit:
        raise ConfigError(
            f"--module-rank {rank} is above the limit {limit} (the run's max_rank {trunk.max_rank}, "
            f"and no more than the adapted tensors' smaller side)"
        )


class ModuleContributor:
    def __init__(self, node: ModuleNode, spec: ModuleSpec, *, then: Worker | None = None,
                 join_timeout: float = 60.0):  # fmt: skip
        """``then``: the work that follows the module (a patch contributor), else serve until stopped."""
        self._node, self.spec, self._then, self._join_timeout = node, spec, then, join_timeout
        self._stop = threading.Event()
        self.published: str | None = None  # the kept module's id

    def stop(self) -> None:
        self._stop.set()
        if self._then is not None:
            self._then.stop()

    async def run(self) -> None:
        node, spec = self._node, self.spec
        give_up = time.monotonic() + self._join_timeout
        manifest = await node.joined(self._join_timeout)
        if spec.task is not None and spec.task != manifest.task:
            raise ConfigError(f"this run trains task {manifest.task!r}, not {spec.task!r}")
        if trunk_of(manifest) is None:
            raise ConfigError(
                f"run {manifest.run_id[:16]}'s task {manifest.task!r} takes no modules (lm does): "
                "join without --module"
            )
        while node.modules is None:  # started right after the rounds
            if time.monotonic() > give_up:
                raise ConfigError("the node's module exchange did not start")
            await asyncio.sleep(WAIT_S)
        exchange, identity = node.modules, node.identity
        assert identity is not None
        task = get_task(manifest.task, manifest.task_args)
        targets = default_targets(task)  # type: ignore[arg-type]
        check_rank(spec.rank, exchange.trunk, targets)
        opened = await self._open_round()
        if opened is None:
            return
        with contextlib.suppress(Exception):  # best effort: the claims the run's peers announce now
            await asyncio.wait_for(exchange.fetch_announced(), CLAIMS_READ_S)
        owner = exchange.owner_of(spec.name)
        if owner is not None and owner != identity.public_key:
            raise ConfigError(
                f"module refused (name_taken): module name already taken by another author: {spec.name} "
                f"(by {node_id_of(owner)[:16]}); choose another --module name"
            )
        number = 1 + max((k.version for k in exchange.kept.values() if k.name == spec.name), default=0)
        data = await self._train_and_sign(manifest, task, opened, identity, number)
        if data is None:
            return
        try:
            status, m = await exchange.keep(data)
        except ModuleRefused as e:
            raise ConfigError(f"module refused ({e.reason}): {e.detail or e}") from None
        await exchange.rescan()  # signs the name claim and announces the module now
        self.published = module_id(data)
        logger.info(
            f"module {m.name} v{m.version} {status} and announced: rank {m.max_rank} on {len(m.adapters)} "
            f"tensors, {len(data)} bytes, trunk {m.trunk[:16]} (id {self.published[:16]})"
        )
        if self._then is not None:
            await self._then.run()
            return
        logger.info(f"serving module {m.name} to the run's peers until stopped (Ctrl-C)")
        while not self._stop.is_set():
            await asyncio.sleep(WAIT_S)

    async def _open_round(self) -> OpenRound | None:
        """The round collecting updates once there is one (its base V_r is the run's current version
        here); None if stopped first."""
        said = False
        while not self._stop.is_set():
            opened = self._node.open_round()
            if opened is not None:
                return opened
            if not said:
                logger.info("waiting for a round to open (its base is the version the module trains on)")
                said = True
            await asyncio.sleep(WAIT_S)
        return None

    async def _train_and_sign(
        self, manifest: Manifest, task, opened: OpenRound, identity: NodeIdentity, number: int
    ) -> bytes | None:
        """The signed record trained on ``opened``'s base, None if stopped while training."""
        spec = self.spec
        bars = {
            "adapter": Progress(f"module {spec.name}: adapter", spec.steps),
            "gate": Progress(f"module {spec.name}: gate", spec.gate_steps),
        }

        def progress(part: str, done: int) -> None:
            bars[part](done)
            if self._stop.is_set():
                raise StopTraining

        logger.info(
            f"training module {spec.name} v{number} on {spec.shard} from version {opened.version[:16]}"
        )
        state = {k: v.copy() for k, v in opened.state.items()}

        def train() -> tuple:
            own, general = task.local_data(spec.shard), task.local_data(None)
            return train_module(task, state, own, general, steps=spec.steps, gate_steps=spec.gate_steps,
                                seed=spec.seed, rank=spec.rank, progress=progress)  # fmt: skip

        try:
            adapters, gw, gb = await asyncio.to_thread(train)
        except StopTraining:
            logger.info("stopped after the current training step")
            return None
        except TaskError as e:
            raise ConfigError(str(e)) from None
        m = Module(manifest.run_id, spec.name, identity.public_key, number, opened.version, spec.description,
                   adapters, gw, gb)  # fmt: skip
        try:
            return sign_module(identity, m)
        except ValueError as e:
            raise ConfigError(str(e)) from None
