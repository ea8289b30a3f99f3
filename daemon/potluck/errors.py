"""Errors that end a command with a one-line message."""


class ConfigError(Exception):
    """A usage or configuration problem: the CLI prints the message and exits with code 2."""
