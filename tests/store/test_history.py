import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from potluck.hashing import tensor_hashes, version_hash
from potluck.identity import NodeIdentity
from potluck.rounds.commit import Commit, CommitSignature, sign_commit
from potluck.store.history import History, HistoryConflict, HistoryError
from potluck.store.versions import VersionStore

# deterministic keys: the crash tests' child processes build the same commits
NODES = [NodeIdentity(Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32)) for i in range(3)]
RUN = "cd" * 32


def _state(r: int) -> dict[str, np.ndarray]:
    return {"w": np.full((8, 8), r, np.float32), "b": np.arange(8, dtype=np.float32) + r}


def _commit(r: int, parent: str | None = None, seed: int = 0) -> Commit:
    state = _state(r + seed * 1000)
    return Commit(
        RUN, r, parent or version_hash(_state(r - 1)), version_hash(state), tensor_hashes(state),
        updates=[f"{r:064x}"], contributors=[NODES[0].node_id], participants=[n.node_id for n in NODES],
        total_weight=r + 1,
    )  # fmt: skip


def test_record_latest_get_log(tmp_path):
    versions = VersionStore(tmp_path / "versions")
    with History(tmp_path / "history.db", versions) as h:
        assert h.latest() is None and h.log() == []
        for r in range(3):
            c = _commit(r)
            sigs = [sign_commit(c, n) for n in NODES]
            assert h.record(c, sigs, _state(r), committed_at=100.0 + r) == 3
        assert h.latest() == _commit(2) and h.get(1) == _commit(1) and h.get(7) is None
        assert h.has_version(version_hash(_state(1))) and not h.has_version("00" * 32)
        assert versions.get(h.latest().version)["w"][0, 0] == 2
        h.set_accuracy(1, 0.75)
        log = h.log()
        assert [e["round"] for e in log] == [0, 1, 2]
        c1 = _commit(1)
        assert log[1] == {
            "round": 1, "commit": c1.id, "version": c1.version, "parent": c1.parent, "updates": 1,
            "contributors": [NODES[0].node_id], "signatures": 3, "time": 101.0, "accuracy": 0.75,
        }  # fmt: skip
        assert [s.node_id for s in h.signatures(1)] == sorted(n.node_id for n in NODES)
    with History(tmp_path / "history.db", versions) as h:  # reopen
        assert h.latest() == _commit(2) and h.integrity_check() == "ok"


def test_signatures_filtered_and_merged(tmp_path):
    with History(tmp_path / "h.db", VersionStore(tmp_path / "v")) as h:
        c = _commit(0)
        outsider = NodeIdentity.generate()
        bad = [sign_commit(c, outsider), CommitSignature(NODES[1].node_id, b"\x00" * 64)]
        assert h.record(c, [sign_commit(c, NODES[0]), *bad], _state(0)) == 1
        assert h.record(c, [sign_commit(c, NODES[0]), sign_commit(c, NODES[2])]) == 1  # adds the new one
        assert len(h.signatures(0)) == 2


def test_version_must_be_written_first_and_conflicts(tmp_path):
    with History(tmp_path / "h.db", VersionStore(tmp_path / "v")) as h:
        with pytest.raises(HistoryError, match="not stored"):
            h.record(_commit(0))
        with pytest.raises(HistoryError, match="hashes to"):
            h.record(_commit(0), state=_state(5))
        h.record(_commit(0), state=_state(0))
        h.record(_commit(1), state=_state(1))
        fork = _commit(0, seed=1)
        with pytest.raises(HistoryConflict):
            h.record(fork, state=_state(1000))
        assert h.latest() == _commit(1)
        h.record(fork, state=_state(1000), replace=True)  # fork choice switched: later rounds go
        assert h.latest() == fork and h.get(1) is None


def test_a_caught_up_commit_drops_the_orphaned_row_before_it(tmp_path):
    """Our round 1 lost the fork choice; the run's round 2 builds on its own V_1: recording it (as a
    catch-up does, with replace) drops our round 1, so the history is one chain again, with a gap."""
    versions = VersionStore(tmp_path / "versions")
    with History(tmp_path / "history.db", versions) as h:
        h.record(_commit(0), state=_state(0))
        ours = _commit(1, seed=7)  # a V_1 only this node committed
        h.record(ours, state=_state(7001))
        theirs = _commit(2)  # parent: the run's V_1, not ours
        assert theirs.parent != ours.version
        h.record(theirs, state=_state(2), replace=True)
        assert h.get(1) is None and h.get(2) == theirs and h.get(0) == _commit(0)
        again = _commit(3)  # a commit on the chain keeps the row before it
        h.record(again, state=_state(3), replace=True)
        assert h.get(2) == theirs and h.latest() == again


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    import potluck.store.history as history
    from tests.store.test_history import NODES, _commit, _state
    from potluck.rounds.commit import sign_commit
    from potluck.store.versions import VersionStore

    mode, base = sys.argv[1], Path(sys.argv[2])
    h = history.History(base / "h.db", VersionStore(base / "v"))
    latest = h.latest()
    r = 0 if latest is None else latest.round + 1
    if mode == "kill-after-version":
        h.record(_commit(0), [sign_commit(_commit(0), NODES[0])], _state(0))
        history._after_version_write = lambda commit: os.kill(os.getpid(), signal.SIGKILL)
        h.record(_commit(1), [sign_commit(_commit(1), NODES[0])], _state(1))
        print("not killed", flush=True)
    else:
        while True:
            c = _commit(r)
            h.record(c, [sign_commit(c, n) for n in NODES], _state(r))
            if r == 0 or latest is not None:
                print("recording", flush=True)
                latest = None
            r += 1
    """
)


def _child(mode: str, base: Path) -> subprocess.Popen:
    root = str(Path(__file__).resolve().parents[2])
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(root=root), mode, str(base)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
    )  # fmt: skip


def test_killed_after_version_write_before_row(tmp_path):
    proc = _child("kill-after-version", tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    versions = VersionStore(tmp_path / "v")
    assert versions.has(_commit(1).version)  # the version was written...
    with History(tmp_path / "h.db", versions) as h:
        assert h.integrity_check() == "ok"
        assert h.latest() == _commit(0) and h.get(1) is None  # ...the row was not
        assert version_hash(versions.get(h.latest().version)) == _commit(0).version
        h.record(_commit(1), [sign_commit(_commit(1), NODES[0])])  # the orphan file is reused
        assert h.latest() == _commit(1)


def test_survives_sigkill_mid_transaction(tmp_path):
    rng = random.Random(1)
    for _ in range(6):
        proc = _child("loop", tmp_path)
        assert proc.stdout.readline().strip() == "recording", proc.stderr.read()
        time.sleep(rng.uniform(0, 0.05))  # the kill lands at a random point of record()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    versions = VersionStore(tmp_path / "v")
    with History(tmp_path / "h.db", versions) as h:
        assert h.integrity_check() == "ok"
        latest = h.latest()
        assert latest is not None and latest.round >= 6
        rounds = [e["round"] for e in h.log()]
        assert rounds == list(range(latest.round + 1))
        for r in rounds:
            assert h.get(r) == _commit(r) and len(h.signatures(r)) == 3
        assert version_hash(versions.get(latest.version)) == latest.version
