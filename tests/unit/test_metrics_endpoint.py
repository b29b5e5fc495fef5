"""The /metrics endpoint holds no thread per connection and no connection forever: 300 half-sent requests
leave the thread count as it was, a scraper still gets the metrics meanwhile, and the stalled connections
are closed after the read timeout."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from hamlet_server.metrics import ServerMetrics
from hamlet_server.metrics_http import MetricsEndpoint


def _scrape(port: int, path: str = "/metrics") -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).read().decode()


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_half_sent_requests_hold_no_threads_and_are_closed_after_the_read_timeout() -> None:
    registry = CollectorRegistry()
    Counter("probe", "a counter to find in the scrape", registry=registry).inc(3)
    endpoint = MetricsEndpoint(registry, read_timeout=1.0, max_connections=16)
    port = endpoint.start("127.0.0.1", 0)
    serving = endpoint._thread
    assert serving is not None and serving.is_alive()
    threads_before = set(threading.enumerate())  # threads left by earlier tests may end meanwhile: compare sets
    stalled = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /metr")  # and never the rest
            stalled.append(sock)
        assert set(threading.enumerate()) <= threads_before  # no thread was started for a connection
        assert "probe_total 3.0" in _scrape(port)  # the newest connection is served, the oldest stalled go
        deadline = time.monotonic() + 30
        for sock in stalled:  # every stalled one is closed: to make room, or by the read timeout
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            assert _closed_by_server(sock), "a half-sent request was kept open past the read timeout"
        assert endpoint.closed_slow == 300
    finally:
        for sock in stalled:
            sock.close()
        endpoint.stop()
    assert not serving.is_alive()  # its one thread ended
    assert set(threading.enumerate()) <= threads_before - {serving}


def test_other_paths_and_methods_get_an_http_error_and_the_server_metrics_serve_text() -> None:
    metrics = ServerMetrics()
    metrics.record("Predict", "OK")
    port = metrics.serve(0)
    try:
        assert metrics.address == ("127.0.0.1", port)
        assert 'hamlet_requests_total{code="OK",method="Predict"} 1.0' in _scrape(port)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            _scrape(port, "/elsewhere")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError, match="405"):
            urllib.request.urlopen(request, timeout=10)
    finally:
        metrics.stop()
    assert metrics.address is None


def test_a_taken_port_raises_oserror_and_leaves_no_thread() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        before = set(threading.enumerate())
        with pytest.raises(OSError):
            MetricsEndpoint(CollectorRegistry()).start("127.0.0.1", holder.getsockname()[1])
        assert set(threading.enumerate()) <= before  # earlier tests' threads may end meanwhile, none may start
