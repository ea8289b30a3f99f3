"""The round engine: the async shell that turns each round's accepted updates into one agreed,
signed, content-addressed version, following the pure rules of potluck.rounds.

loop.py       the round loop (RoundEngine): schedule, attempts, dispatch to the run's placement
entries.py    freezing an attempt: signed entries published and read, their exclusions checked
allreduce.py  the weighted mean inside hivemind's all-reduce (averager.py), and the audit of its sum
sliced.py     a coordinate strategy per reducer slice; slice audits
dense.py      a dense round's weighted mean by potluck's own reduce-scatter; its audits
faults.py     reducer faults of both (published, verified by every node) and convictions
gathered.py   a whole-vector strategy merged by every participant on the gathered updates
commit.py     signing, the quorum, persisting; catching up to (or switching to) the winning commit
attempt.py    what an attempt agrees on (Attempt), what a placement returns (Merged), RoundStatus
updates.py    what the engine needs of the update exchange (AcceptedUpdates)
conduct.py    how this node acts as a participant: the seam a test's adversary overrides
"""

from potluck.engine.attempt import RoundStatus
from potluck.engine.loop import RoundEngine

__all__ = ["RoundEngine", "RoundStatus"]
