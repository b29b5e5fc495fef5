"""What operators read: `--version` on every command, and log lines (text or JSON) that carry the call's
session, model, version and peer, bound per asyncio task so that concurrent calls never mix them."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import io
import json
import logging

import pytest

from hamlet_server.logs import ContextFilter, JsonFormatter, bind_log_context, configure_logging, log_context

COMMANDS = [
    ("hamlet_server.cli", "hamlet-server", "hamlet-server"),
    ("townlet.inference.cli", "hamlet-model", "hamlet-server"),
    ("townlet.training.cli", "hamlet-train", "hamlet-server"),
    ("hamlet_viewer.cli", "hamlet-viewer", "hamlet-server"),
    ("hamlet_client.loadtest.cli", "hamlet-bench", "hamlet-client"),
]


@pytest.mark.parametrize(("module", "prog", "distribution"), COMMANDS)
def test_every_command_prints_its_version(module, prog, distribution, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"{prog} {importlib.metadata.version(distribution)}"


def _capture(log_format: str) -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s%(context_suffix)s"))
    return stream, handler


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_concurrent_calls_log_their_own_context(log_format):
    stream, handler = _capture(log_format)
    logger = logging.getLogger("hamlet_server.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    both_bound = asyncio.Barrier(2)

    async def call(session: str, model: str) -> None:
        bind_log_context(session=session, peer=f"ipv4:127.0.0.1:{len(session)}")
        bind_log_context(model=model, version=7)
        await both_bound.wait()  # each task's binding is in place before either logs
        logger.info("stepped %s", session)

    try:
        await asyncio.gather(call("s-one", "mlp"), call("s-second", "lstm"))
        logger.info("no call")  # outside both tasks: nothing bound here
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert log_context() == {}
    if log_format == "json":
        entries = {e["message"]: e for e in map(json.loads, lines)}
        one = entries["stepped s-one"]
        assert (one["session"], one["model"], one["version"], one["peer"]) == ("s-one", "mlp", 7, "ipv4:127.0.0.1:5")
        assert entries["stepped s-second"]["model"] == "lstm"
        assert entries["stepped s-second"]["level"] == "INFO" and one["logger"] == "hamlet_server.test_logs"
        assert "session" not in entries["no call"]
    else:
        assert "INFO stepped s-one [session=s-one model=mlp v7 peer=ipv4:127.0.0.1:5]" in lines
        assert "INFO stepped s-second [session=s-second model=lstm v7 peer=ipv4:127.0.0.1:8]" in lines
        assert "INFO no call" in lines


def test_json_lines_keep_the_traceback():
    stream, handler = _capture("json")
    logger = logging.getLogger("hamlet_server.test_logs_exc")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    (entry,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert entry["level"] == "ERROR" and "RuntimeError: boom" in entry["exception"]


def test_an_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("INFO", "xml")
