"""The Flower side of bench/pacing.py: Flower's long-lived legacy gRPC server and clients on the digits task.

    <flwr-venv>/bin/python bench/pacing_flower.py server --port P --clients 4 --rounds 10 --task-args '{...}'
    <flwr-venv>/bin/python bench/pacing_flower.py client --server 127.0.0.1:P --shard 0/4 --seed 0 ...

Run by bench/pacing.py with the Flower venv's python and the worktree's daemon/ on PYTHONPATH: it
imports ``potluck.tasks`` only (numpy, torch, scikit-learn; no hivemind), so the clients train the
same model with the same code as potluck's contributors (``task.train`` from the round's base for K
steps, seed ``seed * 100_003 + round`` as potluck.contribute does) and the server scores with the
same ``task.evaluate`` on the same held-out split. FedAvg weighs each client by ``num_examples`` (the
``samples`` task.train returns), as potluck's weighted_mean weighs by sample_count.

The server prints one JSON object on stdout when the run ends: per round the time its parameters were
sent (``configure_fit``) and aggregated (``aggregate_fit``: the round's "commit"), the loopback
counters of this network namespace at each of those instants, the parameter bytes sent to and
received from the clients (the serialized arrays in the protobuf messages), and the accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from potluck.tasks import get_task


def loopback() -> dict[str, int]:
    """Bytes and packets on ``lo`` in this process's network namespace (/proc/self/net/dev)."""
    with open("/proc/self/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                v = rest.split()
                return {"rx_bytes": int(v[0]), "rx_packets": int(v[1]), "tx_bytes": int(v[8]),
                        "tx_packets": int(v[9])}  # fmt: skip
    raise RuntimeError("no lo in /proc/self/net/dev")


def names_of(task: Any) -> list[str]:
    return sorted(task.init_state(0))


def serve(args: argparse.Namespace) -> None:
    import flwr as fl
    from flwr.common import ndarrays_to_parameters

    task = get_task("digits", json.loads(args.task_args))
    genesis = task.init_state(args.seed)
    names = sorted(genesis)
    rounds: dict[int, dict[str, Any]] = {}
    accuracy: list[float] = []

    class Timed(fl.server.strategy.FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            out = super().configure_fit(server_round, parameters, client_manager)
            down = sum(len(t) for t in parameters.tensors)
            rounds[server_round] = {"sent": time.time(), "lo_sent": loopback(), "down_bytes": down * len(out)}
            return out

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            out = super().aggregate_fit(server_round, results, failures)
            row = rounds[server_round]
            up = sum(len(t) for _, res in results for t in res.parameters.tensors)
            row.update(committed=time.time(), lo_committed=loopback(), clients=len(results),
                       failures=len(failures), up_bytes=up)  # fmt: skip
            return out

    def evaluate(server_round: int, arrays: list[np.ndarray], config: dict) -> tuple[float, dict]:
        accuracy.append(float(task.evaluate(dict(zip(names, arrays, strict=True)))))
        return 0.0, {"accuracy": accuracy[-1]}

    strategy = Timed(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=args.clients, min_evaluate_clients=0,
        min_available_clients=args.clients, evaluate_fn=evaluate,
        on_fit_config_fn=lambda r: {"server_round": r},
        initial_parameters=ndarrays_to_parameters([genesis[k] for k in names]),
    )  # fmt: skip
    fl.server.start_server(
        server_address=f"127.0.0.1:{args.port}",
        config=fl.server.ServerConfig(num_rounds=args.rounds),
        strategy=strategy,
    )
    print(json.dumps({"rounds": [rounds[r] for r in sorted(rounds)], "accuracy": accuracy,
                      "flwr": fl.__version__}), flush=True)  # fmt: skip


def join(args: argparse.Namespace) -> None:
    import flwr as fl

    task = get_task("digits", json.loads(args.task_args))
    names = names_of(task)
    data = task.local_data(args.shard, args.seed)

    class Client(fl.client.NumPyClient):
        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            r = int(config["server_round"]) - 1  # potluck's rounds count from 0
            state = dict(zip(names, parameters, strict=True))
            new, samples = task.train(state, data, steps=args.local_steps, seed=args.seed * 100_003 + r)
            return [new[k] for k in names], int(samples), {}

    fl.client.start_client(server_address=args.server, client=Client().to_client(), insecure=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--clients", type=int, required=True)
    server.add_argument("--rounds", type=int, required=True)
    client = sub.add_parser("client")
    client.add_argument("--server", required=True)
    client.add_argument("--shard", required=True)
    client.add_argument("--local-steps", type=int, required=True)
    for p in (server, client):
        p.add_argument("--task-args", required=True, help="the digits task args, JSON")
        p.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    (serve if args.role == "server" else join)(args)


if __name__ == "__main__":
    sys.exit(main())
