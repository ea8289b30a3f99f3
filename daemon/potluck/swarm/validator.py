"""The DHT record validator that guards potluck's keys inside hivemind's DHT."""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.sharedctypes
import time

from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase

from potluck.identity import NodeIdentity
from potluck.swarm.records import (
    SIGNATURE_MARKER,
    CheckedRecord,
    RecordReason,
    RecordRejected,
    check_signed_record,
    is_ours,
    peers_key,
    signing_message,
    split_signature,
    subkey_for,
)

logger = logging.getLogger(__name__)
_REASONS = list(RecordReason)


class RejectionCounters:
    """Per-reason counters, kept outside the DHT (in shared memory: whichever process validates, the
    daemon reads), so a restarted DHT keeps counting where the stopped one left off."""

    def __init__(self) -> None:
        self._array: mp.sharedctypes.SynchronizedArray = mp.get_context("fork").Array("Q", len(_REASONS))

    def add(self, reason: RecordReason) -> None:
        with self._array.get_lock():
            self._array[_REASONS.index(reason)] += 1

    def snapshot(self) -> dict[str, int]:
        with self._array.get_lock():
            return {reason.value: count for reason, count in zip(_REASONS, self._array, strict=True)}


class PeerRecordValidator(RecordValidatorBase):
    """Signs this node's records and checks everyone's.

    Records under the run's peers key must carry a subkey naming an Ed25519 key and a valid signature by
    that key; records elsewhere with a potluck subkey are checked the same way; other records (hivemind's
    own) pass through. A record older (by sequence) than the newest seen from its key is a replay.
    """

    def __init__(self, identity: NodeIdentity, run: str, counters: RejectionCounters):
        self._identity = identity
        self._own_subkey = subkey_for(identity.public_key)
        self._protected_keys = {DHTID.generate(source=peers_key(run)).to_bytes()}
        self._counters = counters
        self._newest: dict[bytes, int] = {}  # public key -> highest sequence seen

    def validate(self, record: DHTRecord) -> bool:
        protected = record.key in self._protected_keys
        if not protected and not is_ours(record.subkey):
            return True
        return self.check(record) is not None

    def check(self, record: DHTRecord) -> CheckedRecord | None:
        """The checked record, or None (the refusal counted by reason): what the DHT does to every record
        under our keys, and what a node does to a peer record pushed to it (swarm/membership.py)."""
        try:
            checked = check_signed_record(
                record.key, record.subkey, record.value, record.expiration_time, now=time.time()
            )
            seen = self._newest.get(checked.public_key)
            if seen is not None and checked.record.sequence < seen:
                raise RecordRejected(RecordReason.REPLAYED, f"sequence {checked.record.sequence} < {seen}")
        except RecordRejected as e:
            self._counters.add(e.reason)
            # an older copy of a live record (a replica answering late) is routine: counted, not logged
            level = logging.DEBUG if e.reason is RecordReason.REPLAYED else logging.INFO
            logger.log(level, f"rejected DHT record: {e}")
            return None
        except Exception as e:  # never let a peer's bytes crash the DHT
            self._counters.add(RecordReason.MALFORMED)
            logger.warning(f"rejected DHT record ({type(e).__name__}: {e})")
            return None
        self._newest[checked.public_key] = checked.record.sequence
        return checked

    def sign_value(self, record: DHTRecord) -> bytes:
        if record.subkey.endswith(self._own_subkey):
            message = signing_message(record.key, record.subkey, record.value, record.expiration_time)
            return record.value + SIGNATURE_MARKER + self._identity.sign(message)
        return record.value

    def strip_value(self, record: DHTRecord) -> bytes:
        if is_ours(record.subkey):
            return split_signature(record.value)[0]
        return record.value

    @property
    def priority(self) -> int:
        return 10  # validate (and strip) before anything else
