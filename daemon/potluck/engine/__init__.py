"""The round engine: the async shell that turns each round's accepted updates into one agreed,
signed, content-addressed version (the rules it follows are the pure potluck.rounds)."""

from potluck.engine.loop import RoundEngine, RoundStatus

__all__ = ["RoundEngine", "RoundStatus"]
