"""Thin Python client for the Hamlet Serve gRPC service."""
