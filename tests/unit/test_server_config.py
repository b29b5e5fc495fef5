"""ServerConfig: flags, HAMLET_* environment variables, validation."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hamlet_server.config import ServerConfig, add_arguments, config_from_args, parse_flags


def test_defaults_bind_loopback_with_one_thread():
    config = ServerConfig()
    assert (config.host, config.port, config.device, config.threads) == ("127.0.0.1", 50051, "auto", 1)


def test_flags_beat_environment_which_beats_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "6000", "--max-delay-us", "250"])
    env = {"HAMLET_MODELS": "/srv/models", "HAMLET_PORT": "7000", "HAMLET_SESSION_TTL": "2.5"}
    config = config_from_args(args, environ=env)
    assert config.port == 6000 and config.models == Path("/srv/models") and config.session_ttl == 2.5
    assert config.max_delay_us == 250


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--max-sessions", "0"], "max_sessions"), (["--threads", "0"], "threads"), (["--port", "x"], "expected int")],
)
def test_bad_settings_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_flags(flags)
