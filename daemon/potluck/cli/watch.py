"""Watching a node: `potluck status --watch` (the status table, redrawn in place with plain ANSI
escapes until Ctrl-C), `potluck dashboard` (the URL of the node's dashboard), and the
--metrics-listen/--dashboard-listen flags of `run` and `join` (potluck.observe serves them).

Plain ANSI rather than a TUI library: the one kept candidate, rich, is only here as a test-time
dependency of transformers, and redrawing a table needs three escape codes.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from potluck.cli.common import Commands, call_node, data_dir_arg, positive_float, run_metric
from potluck.cli.format import format_status
from potluck.errors import ConfigError
from potluck.rpc.address import split_host_port

DEFAULT_DASHBOARD_LISTEN = "127.0.0.1:0"
HOME, CLEAR_LINE, CLEAR_BELOW, HIDE_CURSOR, SHOW_CURSOR = (
    "\x1b[H",
    "\x1b[K",
    "\x1b[J",
    "\x1b[?25l",
    "\x1b[?25h",
)


def _listen_or_off(flag: str):
    def parse(text: str) -> str:
        if text == "off":
            return text
        try:
            split_host_port(text, flag=flag)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(f"{e} or 'off'") from None
        return text

    return parse


def observe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-listen",
        type=_listen_or_off("--metrics-listen"),
        default="off",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default off: Prometheus scrapes an "
        "address its config names, so pick the port; e.g. 127.0.0.1:9450)",
    )
    parser.add_argument(
        "--dashboard-listen",
        type=_listen_or_off("--dashboard-listen"),
        default=DEFAULT_DASHBOARD_LISTEN,
        metavar="HOST:PORT",
        help=f"serve the read-only dashboard here (default {DEFAULT_DASHBOARD_LISTEN}: loopback, any free "
        "port; `potluck dashboard` prints it); 'off' to not serve it",
    )


def watch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--watch", action="store_true", help="redraw the status in place until Ctrl-C")
    parser.add_argument(
        "--interval", type=positive_float, default=1.0, metavar="SECONDS", help="with --watch (default 1)"
    )


def add_parsers(commands: Commands) -> None:
    dash = commands.add_parser(
        "dashboard",
        help="print (or --open) the URL of a running node's dashboard",
        description="Print the URL of the dashboard the node in <data-dir> serves (run --dashboard-listen).",
    )
    data_dir_arg(dash)
    dash.add_argument("--open", action="store_true", help="also open it in the default browser")
    dash.set_defaults(handler=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from potluck.observe.serve import read_dashboard_url

    url = read_dashboard_url(args.data_dir.expanduser())
    if url is None:
        raise ConfigError(
            f"no dashboard in {args.data_dir}: no node runs there, or it runs with --dashboard-listen off"
        )
    print(url)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    return 0


def frame(args: argparse.Namespace) -> str:
    """One screen: a header line and the status table, or why the node did not answer."""
    from potluck.rpc.client import NodeUnreachable

    header = f"potluck status --watch · every {args.interval:g}s · Ctrl-C quits · {time.strftime('%H:%M:%S')}"
    try:
        _, s = call_node(args, lambda c: c.status())
    except NodeUnreachable as e:
        return f"{header}\n\n{e}; retrying"
    return f"{header}\n\n{format_status(s, run_metric(args.data_dir, s['run_id']))}"


def watch_status(args: argparse.Namespace) -> int:
    """Redraw until Ctrl-C (exit 0). On a terminal each frame overwrites the last, line by line (no
    flicker of a full clear); piped, frames follow one another.

    Ctrl-C sets a flag rather than raising: a KeyboardInterrupt raised inside a gRPC call can leave
    grpc's threads so that the process never exits. The frame being drawn finishes (within --timeout)
    and the loop ends; a second Ctrl-C interrupts at once."""
    if args.json:
        raise ConfigError("--watch draws for people; use --json without --watch in scripts")
    tty = sys.stdout.isatty()
    out = sys.stdout
    stop = threading.Event()

    def on_sigint(signum, frame_) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        if tty:
            out.write(HIDE_CURSOR + HOME + CLEAR_BELOW)
        while not stop.is_set():
            text = frame(args)
            if tty:
                out.write(HOME + "".join(f"{line}{CLEAR_LINE}\n" for line in text.splitlines()) + CLEAR_BELOW)
            else:
                out.write(text + "\n\n")
            out.flush()
            stop.wait(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, previous)
        if tty:
            out.write(SHOW_CURSOR)
            out.flush()
    return 0
