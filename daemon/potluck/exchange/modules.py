"""Modules over the swarm: a running node announces the modules it keeps, serves their records by id,
and fetches and keeps the ones its peers announce (docs/modules.md).

* **What is kept** is what ``<data-dir>/modules`` holds (store/modules.py), rescanned every SCAN_S
  seconds (a listing and a stat per file), so a module written by `potluck module publish` or `module
  add` (no running node needed) reaches the peers without a restart; `join --module` keeps its module
  through :meth:`ModuleExchange.keep`. The node signs a name claim for each of its own modules' names.
* **Announcing**: one signed ModuleAnnouncement (modules/announce.py) per kept module under
  ``potluck/<run>/modules``, pushed to the run's peers beside its DHT copy (swarm/bulletin.py),
  again every third of its TTL. A client-mode node, which nobody can dial, does not announce.
* **Fetching**: announcements are read as they are pushed and from the DHT every POLL_S seconds; one
  naming an unknown id, under a name not kept from another author nor owned by another author's
  earlier claim, is fetched from a holder over ``potluck.v1.GetModule`` (at most the announced size,
  at most the record limit); bytes that do not hash to the id cost the holder (counted, avoided);
  the record is then kept as `module add` keeps it, plus the swarm's ownership rule. Every refusal
  is logged and counted once per id by reason (``status_fields``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from hivemind.p2p import P2PContext

from potluck.exchange.chunks import chunked, download_from
from potluck.identity import NodeIdentity, node_id_of
from potluck.manifest import Manifest
from potluck.modules.announce import (
    MAX_HOLDERS,
    BadModuleAnnouncement,
    ModuleAnnouncement,
    NameClaim,
    check_owner,
    modules_key,
    owner,
)
from potluck.modules.record import MAX_BYTES, Module, ModuleRefused, module_id
from potluck.store.modules import SUFFIX, ModuleStore
from potluck.swarm.bulletin import Bulletin
from potluck.swarm.host import SwarmHost
from potluck.tasks import TaskError, get_task
from potluck.v1 import exchange_pb2

logger = logging.getLogger(__name__)

HANDLER = "potluck.v1.GetModule"
SCAN_S = 2.0
POLL_S = 5.0
ANNOUNCE_TTL_S = 120.0
FETCH_TIMEOUT_S = 10.0  # plus the record's size at 1 MiB/s
AVOID_HOLDER_S = 300.0
MAX_TRACKED = 1024  # names with claims, refused ids, holders: what a flood of announcements can grow


@dataclass(frozen=True)
class Trunk:
    """What a module must fit to be kept: the run, its trunk's tensor shapes and hidden size, rank limit."""

    run_id: str
    shapes: dict[str, tuple[int, ...]]
    gate_dim: int
    max_rank: int


@dataclass(frozen=True)
class Kept:
    name: str
    author: bytes
    version: int
    size: int  # bytes of the signed record


def trunk_of(manifest: Manifest) -> Trunk | None:
    """The run's trunk, if its task takes modules (lm does); None otherwise."""
    try:
        task = get_task(manifest.task, manifest.task_args)
    except TaskError:
        return None
    if not callable(getattr(task, "generate", None)) or not hasattr(task, "d_model"):
        return None
    return Trunk(manifest.run_id, dict(task.shapes()), int(task.d_model), manifest.max_rank)


class ModuleExchange:
    def __init__(
        self, host: SwarmHost, identity: NodeIdentity, trunk: Trunk, store: ModuleStore, bulletin: Bulletin,
        addresses_of: Callable[[str], list[str]], *, scan_s: float = SCAN_S, poll_s: float = POLL_S,
        announce_ttl_s: float = ANNOUNCE_TTL_S,
    ):  # fmt: skip
        self._host, self._identity, self.trunk, self._store = host, identity, trunk, store
        self._bulletin, self._addresses_of = bulletin, addresses_of
        self._scan_s, self._poll_s, self._ttl_s = scan_s, poll_s, announce_ttl_s
        self._key = modules_key(trunk.run_id)
        self.kept: dict[str, Kept] = {}  # module id -> what it is, as of the last scan
        self._files: tuple = ()  # (file name, mtime, size) of the last scan
        self._claims: dict[str, dict[bytes, tuple[NameClaim, bytes]]] = {}  # name -> author -> earliest
        self._holders: OrderedDict[str, set[str]] = OrderedDict()
        self._refused: OrderedDict[str, str] = OrderedDict()  # module id -> reason (the bytes were checked)
        self._skipped: set[str] = set()  # ids not fetched for a taken name: counted once, looked at again
        self._inflight: set[str] = set()
        self._avoid: dict[str, float] = {}
        self._announced: dict[str, float] = {}
        self.refused: Counter[str] = Counter()
        self.fetched = 0
        self.bad_holder_fetches = 0
        self._news, self._changed = asyncio.Event(), asyncio.Event()
        self._scanning = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        bulletin.on_post(lambda key: self._news.set() if key == self._key else None)

    @classmethod
    async def started(
        cls, host: SwarmHost, identity: NodeIdentity, manifest: Manifest, data_dir: Path,
        bulletin: Bulletin, addresses_of: Callable[[str], list[str]],
    ) -> ModuleExchange | None:  # fmt: skip
        """A started exchange for ``manifest``'s run, keeping ``data_dir``/modules; None if the run's
        task takes no modules."""
        trunk = trunk_of(manifest)
        if trunk is None:
            return None
        exchange = cls(host, identity, trunk, ModuleStore(data_dir / "modules"), bulletin, addresses_of)
        await exchange.start()
        return exchange

    async def start(self) -> None:
        await self._host.p2p.add_protobuf_handler(
            HANDLER, self._serve, exchange_pb2.ModuleRequest, stream_output=True
        )
        await self.rescan()
        for work, name in ((self._scan_forever, "scan"), (self._announce_forever, "announce"),
                           (self._fetch_forever, "fetch")):  # fmt: skip
            self._tasks.append(asyncio.create_task(work(), name=f"modules-{name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def status_fields(self) -> dict:
        return {"kept": len(self.kept), "fetched": self.fetched, "refused": dict(self.refused),
                "bad_holder_fetches": self.bad_holder_fetches}  # fmt: skip

    # ---- what is kept: the modules dir ----------------------------------------------------------

    async def _scan_forever(self) -> None:
        while True:
            await asyncio.sleep(self._scan_s)
            try:
                await self.rescan()
            except Exception as e:  # a folder we cannot read now: try again at the next scan
                logger.warning(f"scanning the modules failed: {type(e).__name__}: {e}")

    async def rescan(self) -> None:
        """Read the kept modules again if their files changed; a changed set is announced at once."""
        async with self._scanning:  # one at a time: two would both sign a first claim
            found = await asyncio.to_thread(self._read_if_changed)
        if found is None:
            return
        files, kept, claims = found
        for data in claims:
            self._note_claim(data)
        self._files, self.kept = files, kept
        self._changed.set()

    def _read_if_changed(self) -> tuple[tuple, dict[str, Kept], list[bytes]] | None:
        files = []
        for path in self._store.root.glob(f"*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                files.append((path.name, st.st_mtime_ns, st.st_size))
        if tuple(sorted(files)) == self._files:
            return None
        lib = self._store.library(on_damaged=lambda e: logger.warning(f"not announcing module {e}"))
        kept, claims = {}, []
        for name in lib.names():
            k = lib.get(name)
            assert k is not None
            m = k.module
            size = next((f[2] for f in files if f[0] == f"{name}{SUFFIX}"), 0)
            if m.run_id != self.trunk.run_id or not size:  # another run's, or not in <name>.module
                continue
            kept[k.module_id] = Kept(m.name, m.author, m.version, size)
            claim = self._store.claim(name)
            if claim is not None and not self._claims_for(claim, m):  # damaged, or another author's
                claim = None
            if claim is None and m.author == self._identity.public_key:
                claim = NameClaim(self.trunk.run_id, name, m.author, time.time()).sign(self._identity)
                self._store.put_claim(name, claim)
                logger.info(f"claimed module name {name}")
            if claim is not None:
                claims.append(claim)
        return tuple(sorted(files)), kept, claims

    def _claims_for(self, data: bytes, m: Module) -> bool:
        with contextlib.suppress(BadModuleAnnouncement):
            c = NameClaim.verify(data)
            return (c.run_id, c.name, c.author) == (self.trunk.run_id, m.name, m.author)
        return False

    def _note_claim(self, data: bytes) -> NameClaim | None:
        """Remember a valid claim of this run (the earliest per name and author)."""
        try:
            c = NameClaim.verify(data)
        except BadModuleAnnouncement as e:
            logger.debug(f"ignoring a name claim: {e}")
            return None
        full = c.name not in self._claims and len(self._claims) >= MAX_TRACKED
        if c.run_id != self.trunk.run_id or full:
            return None
        by_author = self._claims.setdefault(c.name, {})
        if c.author not in by_author or c.claimed_at < by_author[c.author][0].claimed_at:
            by_author[c.author] = (c, data)
        return c

    def _claims_of(self, name: str) -> list[NameClaim]:
        return [c for c, _ in self._claims.get(name, {}).values()]

    # ---- serving and announcing ------------------------------------------------------------------

    async def _serve(
        self, request: exchange_pb2.ModuleRequest, context: P2PContext
    ) -> AsyncIterator[exchange_pb2.UpdateChunk]:
        uid = request.module_id.hex()
        k = self.kept.get(uid)
        data = await asyncio.to_thread(self._read, k.name, uid) if k is not None else None
        for chunk in chunked(data):
            yield chunk

    def _read(self, name: str, uid: str) -> bytes | None:
        with contextlib.suppress(OSError):
            data = self._store.get(name)
            return data if module_id(data) == uid else None  # replaced since the scan: not that module
        return None

    async def _announce_forever(self) -> None:
        while True:
            await self._host.bootstrap.connected_event.wait()
            self._changed.clear()
            try:
                self.announce_all()
            except Exception as e:
                logger.warning(f"announcing modules failed: {type(e).__name__}: {e}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._ttl_s / 3)

    def announce_all(self) -> None:
        if self._host.client_mode:  # nobody can fetch from us
            return
        now, me = time.time(), self._identity.peer_id
        for uid, k in self.kept.items():
            if self._announced.get(uid, 0.0) > now - self._ttl_s / 3:
                continue
            others = sorted(self._holders.get(uid, set()) - {me})[: MAX_HOLDERS - 1]
            claim = self._claims.get(k.name, {}).get(k.author, (None, b""))[1]
            a = ModuleAnnouncement(uid, k.name, k.author, k.version, k.size, (me, *others),
                                   self._identity.public_key, now, claim)  # fmt: skip
            self._bulletin.post(self._key, uid.encode(), a.sign(self._identity), now + self._ttl_s)
            self._announced[uid] = now
        for uid in [u for u in self._announced if u not in self.kept]:
            del self._announced[uid]

    # ---- fetching ----------------------------------------------------------------------------------

    async def _fetch_forever(self) -> None:
        read_dht_at = 0.0
        while True:
            await self._host.bootstrap.connected_event.wait()
            network = time.monotonic() >= read_dht_at
            if network:
                read_dht_at = time.monotonic() + self._poll_s
            self._news.clear()
            try:
                await self.fetch_announced(network)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.debug(f"looking for modules failed: {type(e).__name__}: {e}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), max(0.0, read_dht_at - time.monotonic()))

    async def fetch_announced(self, network: bool = True) -> None:
        """Fetch what the run's module announcements name and this node lacks (``network``: read the
        DHT too, not only the pushes)."""
        for item in (await self._bulletin.get(self._key, network=network)).values():
            try:
                a = ModuleAnnouncement.verify(item.value, self.trunk.run_id)
            except BadModuleAnnouncement as e:
                logger.debug(f"ignoring a module announcement: {e}")
                continue
            if a.claim:
                self._note_claim(a.claim)
            uid = a.module_id
            if uid in self._holders or len(self._holders) < MAX_TRACKED:
                self._holders.setdefault(uid, set()).update(a.holders[:MAX_HOLDERS])
            if uid in self.kept or uid in self._refused or uid in self._inflight or self._outdated(a):
                continue
            self._inflight.add(uid)
            task = asyncio.create_task(self._fetch(a), name=f"fetch-module-{uid[:12]}")
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)

    def _outdated(self, a: ModuleAnnouncement) -> bool:
        """Not worth fetching: an older version of a kept module (silently), or a name this node keeps
        from another author or whose earliest claim is another author's (counted once per id; the
        announcer names the author, so the id is not refused for good)."""
        kept = next((k for k in self.kept.values() if k.name == a.name), None)
        if kept is not None and kept.author == a.author:
            return kept.version >= a.version
        first = owner(self._claims_of(a.name), time.time())
        if kept is None and (first is None or first.author == a.author):
            return False
        if a.module_id not in self._skipped and len(self._skipped) < MAX_TRACKED:
            self._skipped.add(a.module_id)
            self.refused["name_taken"] += 1
            logger.info(f"not fetching module {a.module_id[:12]}: the name {a.name} is another author's")
        return True

    async def _fetch(self, a: ModuleAnnouncement) -> None:
        uid = a.module_id
        try:
            for holder in self._holder_order(uid):
                data = await self._download_checked(holder, uid, min(a.size, MAX_BYTES))
                if data is None:
                    continue
                try:
                    status, m = await self.keep(data)
                except ModuleRefused as e:
                    self._refuse(uid, e.reason, f"{e.detail or e} (from {holder})")
                    return
                except OSError as e:  # our disk, not the record: try again at a later announcement
                    logger.warning(f"keeping module {uid[:12]} failed: {e}")
                    return
                self.fetched += 1
                logger.info(f"module {m.name} v{m.version} by {node_id_of(m.author)[:12]} {status} "
                            f"(id {uid[:12]}, {len(data)} B, from {holder})")  # fmt: skip
                own_claim = self._claims.get(m.name, {}).get(m.author)
                kept_claim = self._store.claim(m.name)
                if own_claim is not None and (kept_claim is None or not self._claims_for(kept_claim, m)):
                    await asyncio.to_thread(self._store.put_claim, m.name, own_claim[1])
                await self.rescan()
                return
        finally:
            self._inflight.discard(uid)

    def owner_of(self, name: str) -> bytes | None:
        """Whose ``name`` is here: the kept module's author, else the earliest claim's seen, else None."""
        first = owner(self._claims_of(name), time.time())
        kept = next((k.author for k in self.kept.values() if k.name == name), None)
        return kept if kept is not None else first.author if first is not None else None

    async def keep(self, data: bytes) -> tuple[str, Module]:
        """Check a record and keep it as `module add` does, plus the swarm's ownership rule over the
        claims seen: ``("kept" | "superseded", module)``, or ModuleRefused. The next scan announces it."""
        t, claims = self.trunk, {n: self._claims_of(n) for n in self._claims}  # a snapshot for the thread
        return await asyncio.to_thread(
            self._store.admit, data, t.run_id, t.shapes, t.gate_dim, t.max_rank,
            lambda m: check_owner(m, claims.get(m.name, ()), time.time()),
        )  # fmt: skip

    def _refuse(self, uid: str, reason: str, detail: str) -> None:
        if len(self._refused) >= MAX_TRACKED:
            self._refused.popitem(last=False)
        self._refused[uid] = reason
        self.refused[reason] += 1
        logger.warning(f"refused module {uid[:12]} ({reason}): {detail}")

    def _holder_order(self, uid: str) -> list[str]:
        now = time.monotonic()
        holders = [h for h in self._holders.get(uid, ()) if h != self._identity.peer_id
                   and self._avoid.get(h, 0.0) < now]  # fmt: skip
        random.shuffle(holders)
        return sorted(holders, key=lambda h: not self._addresses_of(h))  # live peers first

    async def _download_checked(self, holder: str, uid: str, limit: int) -> bytes | None:
        """The bytes ``holder`` serves for ``uid`` if they hash to it (checked before any decoding)."""
        request = exchange_pb2.ModuleRequest(module_id=bytes.fromhex(uid))
        try:
            data = await asyncio.wait_for(
                download_from(self._host, holder, self._addresses_of(holder), HANDLER, request, limit),
                FETCH_TIMEOUT_S + limit / (1 << 20),
            )
        except Exception as e:  # unreachable, slow or misbehaving: the next holder
            logger.debug(f"fetching module {uid[:12]} from {holder} failed: {type(e).__name__}: {e}")
            return None
        if hashlib.sha256(data).hexdigest() == uid:
            return data
        self.bad_holder_fetches += 1
        self._avoid[holder] = time.monotonic() + AVOID_HOLDER_S
        logger.warning(f"holder {holder} served bytes that are not module {uid[:12]}; avoiding it")
        return None
