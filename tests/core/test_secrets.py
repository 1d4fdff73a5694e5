"""No API key in a repr, a log line or a traceback."""

from __future__ import annotations

import io
import logging

from ai_gateway import logs
from ai_gateway.secrets import REDACTED, Secret, redact


def test_secret_hides_itself() -> None:
    secret = Secret("sk-live-abcdefghijklmnop")
    assert "abcdefgh" not in repr(secret) and "abcdefgh" not in str(secret) and "abcdefgh" not in f"{secret}"
    assert secret.reveal() == "sk-live-abcdefghijklmnop"


def test_redact_removes_known_values_and_key_shapes() -> None:
    text = "bad key sk-proj-AAAAAAAAAAAAAAAAAAAA and AIzaSyBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB and mine=hunter2-secret"
    out = redact(text, ["hunter2-secret"])
    assert "sk-proj-AAAA" not in out and "AIzaSyBBBB" not in out and "hunter2" not in out
    assert out.count(REDACTED) == 3


def test_log_lines_carry_no_key_and_no_traceback() -> None:
    stream = io.StringIO()
    logs.configure("info", secrets=["my-own-token-value"])
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    log = logging.getLogger("ai_gateway.test")
    try:
        raise RuntimeError("upstream said: invalid key sk-ant-api03-CCCCCCCCCCCCCCCCCCCC")
    except RuntimeError:
        log.exception("call failed with my-own-token-value")
    output = stream.getvalue()
    assert "call failed with [REDACTED]" in output
    assert "(RuntimeError)" in output
    assert "Traceback" not in output and "sk-ant-api03" not in output and "my-own-token-value" not in output
