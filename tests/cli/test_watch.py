"""`potluck status --watch` under a pseudo-terminal (it draws, redraws in place, Ctrl-C exits 0) and
`potluck dashboard` without a node. The same with a live node: tests/observe/test_observe_nodes.py."""

from __future__ import annotations

from tests.support.cli import potluck
from tests.support.pty import Terminal

HOME = b"\x1b[H"


def test_watch_redraws_in_place_and_ctrl_c_exits_0(tmp_path):
    # no node at that address: each frame says so and it keeps trying, as it would while a node restarts
    term = Terminal("status", "--watch", "--interval", "0.2", "--rpc", "127.0.0.1:9", "--timeout", "0.5")
    try:
        screen = term.read_until(lambda s: s.count(HOME) >= 3, 30)
        assert b"potluck status --watch" in screen and b"did not answer (UNAVAILABLE); retrying" in screen
        assert b"\x1b[?25l" in screen  # the cursor is hidden while it draws...
        assert term.interrupt() == 0
        assert term.screen.endswith(b"\x1b[?25h")  # ...and shown again on the way out
        assert b"Traceback" not in term.screen
    finally:
        term.close()


def test_watch_is_for_people_not_scripts(tmp_path):
    proc = potluck("status", "--watch", "--json", "--data-dir", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "use --json without --watch" in proc.stderr


def test_dashboard_without_a_node_says_why_in_one_line(tmp_path):
    proc = potluck("dashboard", "--data-dir", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "no dashboard in" in proc.stderr
