"""Hamlet Serve: the gRPC service that hosts Hamlet models."""
