"""potluck: volunteers improve one shared model with signed sparse patches over a P2P swarm."""


def __getattr__(name: str) -> str:
    """``__version__`` and ``AGENT``, looked up on first use: importlib.metadata costs a command that
    does not need them (`potluck --help`, `status`) about a third of its start-up."""
    if name not in ("__version__", "AGENT"):
        raise AttributeError(f"module 'potluck' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("potluck")
    except PackageNotFoundError:  # running from a source tree that is not installed
        found = "0.0.0+source"
    globals().update(__version__=found, AGENT=f"potluck/{found}")
    return globals()[name]


from potluck import lean  # noqa: E402  (before anything imports hivemind: see potluck.lean)

lean.install()
