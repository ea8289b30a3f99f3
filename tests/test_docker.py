"""docker/: the Dockerfile, compose.yaml and the entrypoint wrapper, checked without a Docker engine.

Each node service's argv is handed to the real `potluck` argument parser, and the wrapper script is
run for real with a stand-in `potluck` on PATH, so a renamed flag or a broken wrapper fails here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from potluck.cli import build_parser

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
WRAPPER = "potluck-entrypoint"  # where the Dockerfile installs entrypoint.sh
PROMETHEUS = DOCKER / "prometheus.yml"
METRICS_PORT = "9450"  # every node's --metrics-listen 0.0.0.0:9450, scraped by the prometheus service
RPC_PORT = "7450"  # the control API's port inside a container (--rpc-listen 0.0.0.0:7450)
SAMPLE_PEER = "/ip4/172.18.0.2/tcp/7451/p2p/12D3KooWJZPxCvExTyiofYEuLLEqjpSQsC6LVBAmEyqUDYfbVTh3"
FAKE_PEER_ID = "12D3KooWFakeFakeFakeFakeFakeFakeFakeFakeFakeFake"


def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def nodes() -> dict[str, dict[str, Any]]:
    """The services that run potluck (every one but the monitoring)."""
    return {name: s for name, s in services().items() if s.get("image") == "potluck:dev"}


def image_entrypoint() -> list[str]:
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "Dockerfile has no exec-form ENTRYPOINT"
    return json.loads(match.group(1))


def potluck_argv(service: dict[str, Any]) -> list[str]:
    """The argv `potluck` gets in this service: the wrapper execs potluck with its arguments, each
    "@FILE" replaced by the bootstrap address read from FILE (checked for real in test_wrapper_*)."""
    entrypoint = service.get("entrypoint", image_entrypoint())
    entrypoint = [entrypoint] if isinstance(entrypoint, str) else list(entrypoint)
    command = service.get("command", [])
    assert isinstance(command, list), "use exec-form (list) commands: no shell between docker and potluck"
    argv = [*entrypoint[1:], *command]
    if entrypoint[0] == WRAPPER:
        return [SAMPLE_PEER if a.startswith("@") else a for a in argv]
    assert entrypoint[0] == "potluck", f"unknown entrypoint {entrypoint}"
    assert not any(a.startswith("@") for a in argv), "an @FILE argument needs the wrapper entrypoint"
    return argv


def joiners() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in nodes().items() if name != "bootstrap"}


def test_compose_has_a_bootstrap_node_and_three_joiners() -> None:
    assert "bootstrap" in nodes()
    assert len(joiners()) == 3 and set(services()) == {*nodes(), "prometheus", "grafana"}


@pytest.mark.parametrize("name", sorted(nodes()))
def test_service_argv_is_accepted_by_the_cli_parser(name: str) -> None:
    args = build_parser().parse_args(potluck_argv(nodes()[name]))
    assert args.command == "run"
    assert args.listen == ["/ip4/0.0.0.0/tcp/7451"]
    # listening on all interfaces inside the container is only allowed with the explicit flag
    assert args.rpc_listen == f"0.0.0.0:{RPC_PORT}" and args.allow_remote_rpc
    assert args.metrics_listen == f"0.0.0.0:{METRICS_PORT}"  # for the prometheus service


@pytest.mark.parametrize("name", sorted(nodes()))
def test_healthcheck_is_a_potluck_status_call(name: str) -> None:
    test = nodes()[name]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "potluck"]
    assert build_parser().parse_args(test[2:]).command == "status"


def test_published_control_ports_bind_loopback_only() -> None:
    for name, service in nodes().items():
        control = []
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: use the HOST_IP:HOST_PORT:CONTAINER_PORT string form"
            parts = port.split(":")
            if parts[-1].split("/")[0] != RPC_PORT:
                continue
            control.append(port)
            assert len(parts) == 3, f"{name}: control port {port!r} published on every interface"
            assert ipaddress.ip_address(parts[0]).is_loopback, f"{name}: control port {port!r} not loopback"
        assert control, f"{name}: control port not published"


def test_joiners_depend_on_bootstrap_and_pass_initial_peers() -> None:
    for name, service in joiners().items():
        depends = service.get("depends_on", {})
        assert "bootstrap" in depends, name
        if isinstance(depends, dict):  # long form: wait until healthy, not just started
            assert depends["bootstrap"]["condition"] == "service_healthy", name
        args = build_parser().parse_args(potluck_argv(service))
        assert args.initial_peers == [SAMPLE_PEER], name
        assert "@/swarm/bootstrap.maddr" in service["command"], name
    bootstrap = nodes()["bootstrap"]
    assert bootstrap["environment"]["POTLUCK_PUBLISH_FILE"] == "/swarm/bootstrap.maddr"
    assert bootstrap["environment"]["POTLUCK_PUBLISH_ADDR"].startswith("/dns4/bootstrap/tcp/7451")
    assert not build_parser().parse_args(potluck_argv(bootstrap)).initial_peers


def test_each_node_keeps_its_key_in_its_own_volume() -> None:
    data_volumes = [v.split(":")[0] for s in nodes().values() for v in s["volumes"] if ":/data" in v]
    assert len(data_volumes) == len(nodes()) == len(set(data_volumes))


def test_prometheus_scrapes_every_node_and_is_published_on_loopback_only() -> None:
    prometheus = services()["prometheus"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in prometheus["volumes"] if v.startswith("./"))
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    assert mounts["./prometheus.yml"] == config_path  # it reads the file we ship
    config = yaml.safe_load(PROMETHEUS.read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for c in job["static_configs"] for t in c["targets"]]
    assert sorted(targets) == sorted(f"{name}:{METRICS_PORT}" for name in nodes())
    for port in prometheus["ports"]:
        host, _, _ = port.split(":")
        assert ipaddress.ip_address(host).is_loopback, port
    for name, service in nodes().items():  # the metrics stay inside the compose network
        assert not any(p.split(":")[-1] == METRICS_PORT for p in service.get("ports", [])), name


def test_dockerfile_installs_cpu_torch_before_the_project_and_runs_potluck_unprivileged() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    runs = [i for i, line in enumerate(lines) if line.startswith("RUN ")]
    torch = next(i for i in runs if "torch==2.13.0" in lines[i])
    assert "download.pytorch.org/whl/cpu" in lines[torch]
    project = next(i for i in runs if re.search(r"pip install \.(\s|$)", lines[i]))
    assert torch < project
    assert lines[0].startswith("#") and any(re.match(r"FROM python:3\.11-slim\b", line) for line in lines)
    assert image_entrypoint() == ["potluck"]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "EXPOSE 7451" in lines
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert "ENV POTLUCK_DATA_DIR=/data" in lines
    assert any(line.startswith("VOLUME") and "/data" in line for line in lines)


def test_entrypoint_script_parses_and_is_executable() -> None:
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR


# ---- the wrapper, run for real with a stand-in `potluck` -------------------------------------------


@pytest.fixture
def fake_potluck(tmp_path: Path) -> dict[str, str]:
    """PATH with a `potluck` that answers `id --json` and otherwise prints its argv, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "potluck"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = id ]; then echo \'{{"node_id": "ab", "peer_id": "{FAKE_PEER_ID}"}}\'; exit 0; fi\n'
        'printf "%s\\n" "$@"\n'
    )
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "POTLUCK_WAIT_S": "2"}


def run_wrapper(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.skipif(shutil.which("getent") is None, reason="needs getent (it is in the image)")
def test_wrapper_publishes_then_joiner_reads_and_resolves(
    tmp_path: Path, fake_potluck: dict[str, str]
) -> None:
    maddr = tmp_path / "bootstrap.maddr"
    env = {
        **fake_potluck,
        "POTLUCK_PUBLISH_FILE": str(maddr),
        "POTLUCK_PUBLISH_ADDR": "/dns4/localhost/tcp/7451",
    }
    boot = run_wrapper(["run", "--listen", "/ip4/0.0.0.0/tcp/7451"], env)
    assert boot.returncode == 0, boot.stderr
    assert boot.stdout.split() == ["run", "--listen", "/ip4/0.0.0.0/tcp/7451"]  # argv passed through
    assert maddr.read_text() == f"/dns4/localhost/tcp/7451/p2p/{FAKE_PEER_ID}\n"

    join = run_wrapper(["run", "--initial-peers", f"@{maddr}"], fake_potluck)
    assert join.returncode == 0, join.stderr
    assert join.stdout.split() == ["run", "--initial-peers", f"/ip4/127.0.0.1/tcp/7451/p2p/{FAKE_PEER_ID}"]


def test_wrapper_fails_when_the_address_never_appears(tmp_path: Path, fake_potluck: dict[str, str]) -> None:
    result = run_wrapper(
        ["run", "--initial-peers", f"@{tmp_path / 'missing'}"], {**fake_potluck, "POTLUCK_WAIT_S": "1"}
    )
    assert result.returncode != 0
    assert "no usable address" in result.stderr
    assert result.stdout == ""  # potluck never started


def test_grafana_reads_the_shipped_provisioning_and_graphs_only_metrics_a_node_serves() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from potluck.observe.metrics import render
    from potluck.rpc.jsonify import message_to_dict
    from potluck.v1 import control_pb2

    grafana = services()["grafana"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in grafana["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    [source] = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in services()
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/potluck.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts["./grafana/dashboards"]
    assert all(ipaddress.ip_address(p.split(":")[0]).is_loopback for p in grafana["ports"])
    # every series a panel asks for is one a node's /metrics has (a renamed metric fails here)
    status = message_to_dict(
        control_pb2.GetStatusResponse(
            accuracy=0.5, rejected_updates={"wrong_run": 1},
            traffic=control_pb2.Traffic(kinds={"sync": control_pb2.TrafficBytes(sent=1, recv=1)}),
            defence=control_pb2.Defence(bans=[control_pb2.Ban(reason="equivocation")]),
            aggregation=control_pb2.Aggregation(
                last_phases={"merge": 0.1}, commit_seconds=control_pb2.Histogram(bounds=[1.0], counts=[1])),
        )
    )  # fmt: skip
    served = {
        s.name for f in text_string_to_metric_families(render(lambda: status).decode()) for s in f.samples
    }
    dashboard = json.loads((DOCKER / "grafana/dashboards/potluck.json").read_text())
    asked = {
        m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"potluck_\w+", t["expr"])
    }
    assert asked and asked <= served, asked - served
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["uid"]}
