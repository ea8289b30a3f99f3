"""The control API: a gRPC server inside the node, a client for the CLI."""
