"""Settings: env parsing, clamping, and errors that name the setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from ai_gateway.cli import describe_settings_error
from ai_gateway.settings import Settings


def test_lists_accept_commas_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_GATEWAY_DEFAULT_MODELS", "openai/gpt-4o-mini, anthropic/claude-haiku-4-5")
    assert Settings(_env_file=None).default_models == ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"]
    monkeypatch.setenv("AI_GATEWAY_DEFAULT_MODELS", '["a/b", "c/d"]')
    assert Settings(_env_file=None).default_models == ["a/b", "c/d"]


def test_custom_providers_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_GATEWAY_CUSTOM_PROVIDERS", '{"local": {"base_url": "http://127.0.0.1:8080/v1/"}}')
    local = Settings(_env_file=None).custom_providers["local"]
    assert local.base_url == "http://127.0.0.1:8080/v1" and local.dialect == "openai" and local.api_key_env is None


def test_bad_values_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_GATEWAY_MAX_MODELS", "0")
    with pytest.raises(ValidationError, match="max_models"):
        Settings(_env_file=None)
    monkeypatch.delenv("AI_GATEWAY_MAX_MODELS")
    monkeypatch.setenv("AI_GATEWAY_CUSTOM_PROVIDERS", '{"x": {"base_url": "ftp://nope"}}')
    with pytest.raises(ValidationError, match="base_url"):
        Settings(_env_file=None)


@pytest.mark.parametrize(("value", "expected"), [("", None), ("2.5", 2.5), ("0.1", 0.1)])
def test_the_progress_interval_may_be_off_or_a_tenth_of_a_second_or_more(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: float | None
) -> None:
    monkeypatch.setenv("AI_GATEWAY_PROGRESS_INTERVAL_S", value)
    assert Settings(_env_file=None).progress_interval_s == expected


def test_a_progress_interval_that_would_flood_the_client_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_GATEWAY_PROGRESS_INTERVAL_S", "1e-12")
    with pytest.raises(ValidationError, match=r"progress_interval_s[\s\S]*greater than or equal to 0.1"):
        Settings(_env_file=None)


def test_custom_providers_that_are_not_json_name_the_setting_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings parsed the JSON itself, and its error was a 45-line traceback from every command."""
    monkeypatch.setenv("AI_GATEWAY_CUSTOM_PROVIDERS", "{bad")
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    described = describe_settings_error(info.value)
    assert described.startswith("AI_GATEWAY_CUSTOM_PROVIDERS: Value error, not valid JSON (")
    assert described.endswith('write a JSON object such as {"lms": {"base_url": "http://localhost:1234/v1"}}')
    monkeypatch.setenv("AI_GATEWAY_CUSTOM_PROVIDERS", "")
    assert Settings(_env_file=None).custom_providers == {}


def test_timeouts_are_clamped_to_the_documented_range() -> None:
    settings = Settings(_env_file=None, min_timeout_s=1, default_timeout_s=30, max_timeout_s=120)
    assert settings.clamp_timeout(None) == 30
    assert settings.clamp_timeout(0.01) == 1
    assert settings.clamp_timeout(10_000) == 120
    assert settings.clamp_timeout(5) == 5
    with pytest.raises(ValidationError, match="AI_GATEWAY_DEFAULT_TIMEOUT_S"):
        Settings(_env_file=None, default_timeout_s=500, max_timeout_s=300)


def test_the_auth_token_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_GATEWAY_AUTH_TOKEN", "tok-very-secret")
    settings = Settings(_env_file=None)
    assert "tok-very-secret" not in repr(settings) and "tok-very-secret" not in settings.model_dump_json()


def test_cli_names_the_variable_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from ai_gateway.cli import describe_settings_error

    monkeypatch.setenv("AI_GATEWAY_CUSTOM_PROVIDERS", '{"x": {"base_url": "ftp://nope"}}')
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    assert describe_settings_error(info.value).startswith("AI_GATEWAY_CUSTOM_PROVIDERS (x.base_url): ")
    monkeypatch.delenv("AI_GATEWAY_CUSTOM_PROVIDERS")
    monkeypatch.setenv("AI_GATEWAY_DEFAULT_TIMEOUT_S", "900")
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    assert "AI_GATEWAY_DEFAULT_TIMEOUT_S must lie between" in describe_settings_error(info.value)


@pytest.mark.parametrize("value", ["inf", "nan", "1e17"])
def test_a_cache_ttl_redis_cannot_keep_is_refused_at_start(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """An infinite or huge TTL made every store fail (Redis refuses the expiry) and left its lease behind."""
    for name in ("AI_GATEWAY_CACHE_TTL_S", "AI_GATEWAY_CACHE_MAX_TTL_S"):
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    assert describe_settings_error(info.value).startswith("AI_GATEWAY_CACHE_TTL_S: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # float() reads these; the in-memory client then sent null: the query ran with defaults and exited 0.
        (["query", "hi", "--temperature", "nan"], "argument --temperature: 'nan' is not a finite number"),
        (["query", "hi", "--timeout", "inf"], "argument --timeout: 'inf' is not a finite number"),
        (["query", "hi", "--hedge-after", "nan"], "argument --hedge-after: a number of seconds, 'auto' or 'off'"),
        (["eval", "d.jsonl", "-m", "mock/echo", "-o", "o.jsonl", "--temperature=-inf"], "is not a finite number"),
        # Past 65535 the port reached uvicorn, which logged an 81-line traceback.
        (["serve", "--transport", "http", "--port", "99999"], "--port: 99999 is not a port number (0 to 65535)"),
        # An empty item ("a,,b") was dropped without a word, where the tool refuses a malformed id.
        (["query", "hi", "--models", " , "], "argument --models/-m: ' , ' has an empty id (item 1); separate"),
        (["eval", "d.jsonl", "-m", "mock/echo,,mock/fixed:4", "-o", "o.jsonl"], "has an empty id (item 2)"),
    ],
)
def test_option_values_on_the_command_line_are_checked_before_anything_runs(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from ai_gateway.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "5"], "--temperature: 5.0 is greater than the maximum of 2"),
        (["--max-tokens", "0"], "--max-tokens: 0 is less than the minimum of 1"),
        (["--sample", "-1"], "--sample: -1 is less than the minimum of 0"),
        (["--timeout", "-1"], "--timeout: -1.0 is less than or equal to the minimum of 0"),
        (["--hedge-after", "-2"], "--hedge-after: -2.0 is less than or equal to the minimum of 0"),
    ],
)
def test_a_query_flag_out_of_the_tools_bounds_is_refused_by_its_flag_name(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tool's refusal reached the shell as pydantic's dump, naming max_tokens (not --max-tokens), with a link,
    after a fastmcp warning."""
    from ai_gateway import cli

    monkeypatch.chdir(tmp_path)  # no .env
    try:
        code = cli.main(["query", "hi", "--models", "mock/echo", *flags])
    except SystemExit as stop:
        code = stop.code
    assert (code, capsys.readouterr()) == (2, ("", f"ai-gateway: {message}\n"))


def test_models_given_several_times_are_all_asked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """argparse kept the last --models only: `-m ollama/llama3.2 -m mock/echo` asked mock/echo alone, and said
    nothing of the model dropped (found by a review)."""
    from ai_gateway import cli

    argv = ["eval", "d.jsonl", "-o", "o.jsonl", "-m", "mock/echo", "-m", "mock/fixed:4, mock/fixed:5"]
    parsed = cli.build_parser().parse_args(argv)
    assert parsed.models == ["mock/echo", "mock/fixed:4", "mock/fixed:5"]
    monkeypatch.chdir(tmp_path)  # no .env
    code = cli.main(["query", "hi", "-m", "mock/fixed:4", "-m", "mock/echo", "-s", "consensus", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert (code, [r["model"] for r in result["results"]]) == (0, ["mock/fixed:4", "mock/echo"])


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://:hunter2/xyz@127.0.0.1:6379/0", "percent-encode them (%2F, %3F, %23)"),
        ("redis://:hunter2#xyz@127.0.0.1:6379/0", "percent-encode them"),
        ("redis://:p@h:63x9/0", "the port is not a number"),
        ("127.0.0.1:6379", "must start with redis://, rediss:// or unix://"),
    ],
)
def test_a_redis_url_redis_py_would_misread_is_refused_without_repeating_it(url: str, says: str) -> None:
    """redis-py failed on these at the first connection, with the password in a full traceback."""
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, redis_url=url)
    shown = describe_settings_error(info.value)  # what the command prints
    assert says in shown and shown.startswith("AI_GATEWAY_REDIS_URL: ")
    assert "hunter2" not in shown and "63x9" not in shown


def test_an_empty_host_or_path_is_the_default_not_every_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    """`AI_GATEWAY_HOST=` bound every interface (uvicorn reads "" so), without a token; `AI_GATEWAY_PATH=` served MCP
    at /. Empty means unset, as for every other setting."""
    monkeypatch.setenv("AI_GATEWAY_HOST", "")
    monkeypatch.setenv("AI_GATEWAY_PATH", " ")
    settings = Settings(_env_file=None)
    assert (settings.host, settings.path) == ("127.0.0.1", "/mcp")
    monkeypatch.setenv("AI_GATEWAY_HOST", "0.0.0.0")
    assert Settings(_env_file=None).host == "0.0.0.0"


def test_the_log_level_is_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_GATEWAY_LOG_LEVEL", "INFO")
    assert Settings(_env_file=None).log_level == "info"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("AI_GATEWAY_ALLOWED_HOSTS", "http://gw.example.com",
         "AI_GATEWAY_ALLOWED_HOSTS: Value error, 'http://gw.example.com': write the host name alone, as a Host header "
         "carries it (e.g. 'gw.example.com')"),
        ("AI_GATEWAY_ALLOWED_ORIGINS", "example.com",
         "AI_GATEWAY_ALLOWED_ORIGINS: Value error, 'example.com': write an origin as a browser sends it, "
         "scheme://host[:port] (e.g. 'https://example.com')"),
        ("AI_GATEWAY_CUSTOM_PROVIDERS", '{"corp": {"base_url": "http://x", "api_key_env": "CORP KEY"}}',
         "AI_GATEWAY_CUSTOM_PROVIDERS (corp.api_key_env): Value error, 'CORP KEY' is no environment variable name"),
        ("AI_GATEWAY_CUSTOM_PROVIDERS", '{"corp": {"base_url": "http://x", "api_key_env": ""}}',
         "AI_GATEWAY_CUSTOM_PROVIDERS (corp.api_key_env): Value error, '' is no environment variable name"),
    ],
)  # fmt: skip
def test_values_that_would_match_nothing_are_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    """Accepted, each matched nothing: a proxy's Host got 421, a browser's origin 403, a host stayed unconfigured."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    assert describe_settings_error(info.value).startswith(says)


def test_host_names_and_origins_as_headers_carry_them_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AI_GATEWAY_ALLOWED_HOSTS", "gw.example.com:8443,*.example.com,[::1]:8000")
    monkeypatch.setenv("AI_GATEWAY_ALLOWED_ORIGINS", "https://app.example.com,http://localhost:3000")
    settings = Settings(_env_file=None)
    assert settings.allowed_hosts == ["gw.example.com:8443", "*.example.com", "[::1]:8000"]
    assert settings.allowed_origins == ["https://app.example.com", "http://localhost:3000"]
