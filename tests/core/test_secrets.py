"""No API key in a repr, a log line or a traceback."""

from __future__ import annotations

import io
import json
import logging
from urllib.parse import quote, quote_plus

from ai_gateway import logs
from ai_gateway.secrets import (
    REDACTED,
    Secret,
    credentials_in,
    environment_credentials,
    redact,
    redact_cut,
    redact_known,
    redact_url,
    url_password,
)


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


def test_credentials_inside_urls_are_redacted_wherever_they_show() -> None:
    """A base URL's ?api-key= reached the log in httpx's request line, and redis-py's ?password= the status."""
    line = 'HTTP Request: POST http://h:1/v1/chat/completions?api-version=1&api-key=QSECRET123 "HTTP/1.1 200 OK"'
    assert redact(line) == (
        'HTTP Request: POST http://h:1/v1/chat/completions?api-version=1&api-key=[REDACTED] "HTTP/1.1 200 OK"'
    )
    assert redact("at redis://user:pa55word@h:6379/0 failed") == "at redis://user:[REDACTED]@h:6379/0 failed"
    assert redact("http://host:8080/path and ?page=2&sort=key") == "http://host:8080/path and ?page=2&sort=key"
    assert redact_url("redis://h:6379/0?password=pw&db=1") == "redis://h:6379/0?password=****&db=1"
    assert redact_url("redis://:pw@[::1]:6379/0") == "redis://:****@[::1]:6379/0"
    assert redact_url("https://llm.corp/v1?api-version=2024-06-01") == "https://llm.corp/v1?api-version=2024-06-01"


KEY = "Zq+7/Ab=c%d@e:fQQ"  # not key-shaped: only the known value's spellings can catch it


def test_a_key_is_redacted_however_it_is_echoed() -> None:
    """A provider echoes a key percent-encoded (in a URL, a form), JSON-escaped (inside a JSON text body), or with
    the stray newline it was set with; a message cut at 500 characters ends with its beginning."""
    spellings = [quote(KEY, safe=""), quote_plus(KEY), json.dumps({"d": KEY})[7:-2], KEY.replace("/", "\\/")]
    for form in spellings:
        assert redact(f"bad key {form} given", [KEY]) == f"bad key {REDACTED} given"
    assert redact(repr(f"Bearer {KEY}\n".encode()), [f"{KEY}\n"]) == f"b'Bearer {REDACTED}'"
    assert redact_cut("x" * 490 + KEY[:9], [KEY]) == "x" * 490 + REDACTED
    assert redact_cut("ends with Zq+7/A", [KEY]) == f"ends with {REDACTED}"
    assert redact_cut("ends with Zq+7", [KEY]) == "ends with Zq+7"  # too short to tell from chance


def test_a_credential_in_a_path_and_query_without_its_scheme_is_redacted() -> None:
    echoed = "Cannot POST /openai/deployments/d/chat/completions?api-version=2024-06-01&api-key=AzKey0123456789"
    assert redact(echoed) == echoed.replace("AzKey0123456789", REDACTED)


def test_an_azure_functions_code_is_a_credential_but_a_zipcode_is_not() -> None:
    """Azure Functions take their key as ?code=: a base URL holding one showed it in list_models and in errors."""
    url = "https://fn.azurewebsites.net/api/chat?code=AzFnKey0123456789&page=2"
    assert redact_url(url) == "https://fn.azurewebsites.net/api/chat?code=****&page=2"
    assert redact(f"POST {url} failed") == f"POST {url.replace('AzFnKey0123456789', REDACTED)} failed"
    assert credentials_in(url) == ["AzFnKey0123456789"]
    plain = "https://geo.example/v1?zipcode=75001&encode=utf8"
    assert redact_url(plain) == plain and redact(plain) == plain and credentials_in(plain) == []


def test_a_password_holding_a_slash_is_found_and_hidden() -> None:
    """urlsplit takes "hunter2/xyz@llm.example/v1" for a path: the password showed in list_models whole."""
    assert redact_url("https://user:hunter2/xyz@llm.example/v1") == "https://user:****@llm.example/v1"
    assert credentials_in("https://user:hunter2/xyz@llm.example/v1") == ["hunter2/xyz"]


def test_credentials_in_settings_are_found_by_their_names() -> None:
    options = {"extra_headers": {"api-key": "azure-secret", "X-Title": "my app"}, "max_tokens_field": "max_tokens"}
    url = "https://llm.corp/v1?api-version=1&api-key=QKEY"
    assert sorted(credentials_in([options, url])) == ["QKEY", "azure-secret"]


def test_a_bare_token_before_the_host_is_a_credential_and_hidden() -> None:
    """https://TOKEN@host has no ":" in its userinfo: only user:password@ was known, so the token was shown as
    given (list_models, `ai-gateway models`) and was no secret to redact from log lines."""
    url = "https://tok-SECRETUSERONLY123@api.example/v1"
    assert redact_url(url) == "https://****@api.example/v1"
    assert credentials_in(url) == ["tok-SECRETUSERONLY123"]
    assert environment_credentials({"OPENAI_BASE_URL": url}) == {"tok-SECRETUSERONLY123"}
    assert redact(f"POST {url}/chat/completions") == f"POST https://{REDACTED}@api.example/v1/chat/completions"
    # An "@" after the host is part of the path, not a userinfo.
    assert redact_url("https://api.example/users/@me?page=2") == "https://api.example/users/@me?page=2"
    assert redact("GET https://api.example/users/@me") == "GET https://api.example/users/@me"


def test_a_password_holding_an_at_sign_is_hidden_whole() -> None:
    """redis-py reads the password to the last "@" before the host; redaction stopped at the first, and the rest of
    the password showed in gateway_status and the start-up warning (a review's reproducer)."""
    url = "redis://bob:LEAK@pw99:x@127.0.0.1:6379/12"
    assert url_password(url) == "LEAK@pw99:x"
    assert redact_url(url) == "redis://bob:****@127.0.0.1:6379/12"
    assert redact(f"redis cache at {url} failed") == f"redis cache at redis://bob:{REDACTED}@127.0.0.1:6379/12 failed"
    assert redact_url("https://tok@en@api.example/v1") == "https://****@api.example/v1"
    assert redact_url("https://api.example/users/@me") == "https://api.example/users/@me"  # after the host: a path


def test_a_variable_named_like_a_credential_anywhere_in_its_name_is_one() -> None:
    """A plugin's MYHOST_APIKEY (no "_KEY" suffix) showed in the warning of the plugin that failed to read it."""
    environ = {
        "MYHOST_APIKEY": "LEAKCANARYmyhost1234",
        "GITHUB_TOKEN_RO": "ghp_0123456789abcdef",
        "FEATURE_TOKEN_ENABLED": "true",  # a flag: redacting it would blank every "true" in the logs
        "GNOME_KEYRING_CONTROL": "/run/user/1000/keyring",
        "MAX_TOKENS_DEFAULT": "409600000000",
    }
    assert environment_credentials(environ) == {"LEAKCANARYmyhost1234", "ghp_0123456789abcdef"}


def test_only_known_secrets_leave_an_answer() -> None:
    text = "Bearer sk-real-0123456789 was sent; write yours as Bearer YOUR_TOKEN_HERE or sk-abc123456789xyz"
    assert redact_known(text, ("sk-real-0123456789",)) == (
        "Bearer [REDACTED] was sent; write yours as Bearer YOUR_TOKEN_HERE or sk-abc123456789xyz"
    )
    assert redact_known(text, ()) == text
