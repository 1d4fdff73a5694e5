"""The registry: built-ins and plugins through one entry-point path, lazily, with clear reasons."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points

import pytest

from ai_gateway.registry import ENTRY_POINT_GROUP, Registry, RegistryError
from ai_gateway.settings import CustomProvider, Settings

BUILTINS = {
    "openai", "together", "groq", "openrouter", "deepseek", "mistral", "fireworks", "vllm", "lmstudio",
    "anthropic", "gemini", "ollama", "mock",
}  # fmt: skip


def plugin(name: str, attr: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"tests.core.plugin_example:{attr}", group=ENTRY_POINT_GROUP)


def installed() -> list[EntryPoint]:
    return list(entry_points(group=ENTRY_POINT_GROUP))


def test_builtins_are_registered_as_entry_points_of_this_distribution() -> None:
    registry = Registry(installed(), environ={})
    assert set(registry.names()) >= BUILTINS
    assert {registry.status(n).source for n in BUILTINS} == {"built-in"}


def test_plugins_load_lazily_through_the_same_path() -> None:
    sys.modules.pop("tests.core.plugin_example", None)
    registry = Registry([*installed(), plugin("acme", "ACME")], environ={"ACME_API_KEY": "k-123"})
    assert "acme" in registry.names()
    assert "tests.core.plugin_example" not in sys.modules  # listing does not import
    status = registry.status("acme")
    assert status.configured and status.reason == "ACME_API_KEY is set" and status.source.startswith("plugin")
    config = registry.config("acme")
    assert config.base_url == "https://acme.example/api"
    assert config.api_key is not None and config.api_key.reveal() == "k-123"
    assert "k-123" not in repr(config)


def test_plugins_can_be_switched_off_and_never_shadow_a_builtin() -> None:
    shadow = EntryPoint(name="openai", value="tests.core.plugin_example:ACME", group=ENTRY_POINT_GROUP)
    registry = Registry([*installed(), shadow], environ={})
    assert registry.spec("openai").base_url == "https://api.openai.com/v1"
    off = Registry([*installed(), plugin("acme", "ACME")], environ={}, load_plugins=False)
    assert "acme" not in off.names()


@pytest.mark.parametrize(
    ("attr", "reason"),
    [("NOT_A_SPEC", "not a ProviderSpec"), ("WRONG_NAME", "names a spec called"), ("MISSING", "AttributeError")],
)
def test_a_broken_plugin_is_reported_not_fatal(attr: str, reason: str) -> None:
    registry = Registry([*installed(), plugin("broken", attr)], environ={})
    status = registry.status("broken")
    assert not status.configured and reason in status.reason
    with pytest.raises(RegistryError, match="failed to load"):
        registry.config("broken")
    assert registry.status("mock").configured


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("grok", "AI_GATEWAY_DISABLED_PROVIDERS: 'grok' names no provider 'grok' (did you mean groq?); provider "
                 "names:"),
        ("groq,Together", "AI_GATEWAY_DISABLED_PROVIDERS: 'Together' names no provider 'Together' (write together)"),
    ],
)
def test_disabling_a_provider_that_does_not_exist_is_refused(value: str, message: str) -> None:
    """A typo left the provider it meant to turn off in use, with nothing to say so."""
    with pytest.raises(RegistryError) as info:
        Registry.from_settings(Settings(_env_file=None, disabled_providers=value), {}, installed())
    assert str(info.value).startswith(message)
    assert "groq" not in Registry.from_settings(Settings(_env_file=None, disabled_providers="groq"), {}).names()


def test_a_base_url_variable_without_a_scheme_leaves_its_provider_unconfigured() -> None:
    """OPENAI_BASE_URL=127.0.0.1:18081/v1 showed "configured"; every call then failed in the transport, was retried
    and counted against the circuit."""
    registry = Registry(installed(), environ={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "127.0.0.1:18081/v1"})
    status = registry.status("openai")
    assert (status.configured, status.reason) == (False, "OPENAI_BASE_URL must start with http:// or https://")
    with pytest.raises(RegistryError, match="OPENAI_BASE_URL must start with http:// or https://"):
        registry.config("openai")
    fine = Registry(installed(), environ={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "HTTP://127.0.0.1:18081/v1"})
    assert fine.status("openai").configured


def test_a_plugin_naming_its_key_variable_as_a_string_fails_to_load_saying_so() -> None:
    """api_key_env="STRKEY_API_KEY" was read letter by letter: the shell's $_ counted as its key, and a one-letter
    variable's value was sent as the key."""
    entry = EntryPoint(name="strkey", value="tests.core.plugin_str_key_env:STRKEY", group=ENTRY_POINT_GROUP)
    registry = Registry([*installed(), entry], environ={"_": "/usr/bin/env", "S": "not-a-key"})
    status = registry.status("strkey")
    assert not status.configured
    assert "ProviderSpec.api_key_env must be a tuple of variable names, e.g. ('STRKEY_API_KEY',)" in status.reason


@pytest.mark.parametrize(
    ("attr", "model", "where"),
    [
        ("CHECK_RAISES", "checkraises/m", "checking the model id"),
        ("INIT_RAISES", "initraises/m", "starting its adapter"),
    ],
)
async def test_a_plugin_raising_while_a_call_is_checked_is_refused_by_name(
    attr: str, model: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its exception escaped the tool: "Error calling tool 'query_models'", naming neither the model nor the plugin,
    and exit status 2 with nothing to fix in the call. A plugin that fails to load is refused by name; so is this."""
    from ai_gateway.errors import InvalidArgument
    from ai_gateway.gateway import Gateway
    from ai_gateway.http import SharedClient

    settings = Settings(_env_file=None)
    name = model.partition("/")[0]
    environ = {"OTHER_API_KEY": "k-plugin-secret-77"}  # what its message quotes: a credential the gateway knows
    registry = Registry.from_settings(settings, environ, [*installed(), plugin(name, attr)])
    client = SharedClient(settings)
    try:
        gateway = Gateway(settings, registry, client)
        with pytest.raises(InvalidArgument) as info:
            await gateway.query(prompt="hi", models=["mock/echo", model])
    finally:
        await client.aclose()
    assert info.value.message == (
        f"models[1]: {model!r}: provider {name!r} failed while {where} (RuntimeError: a bug in its adapter; see the "
        "log)"
    )
    assert f"provider {name!r} raised RuntimeError while {where}: bug while" in caplog.text
    assert "k-plugin-secret-77" not in caplog.text


def test_a_plugin_failing_on_its_key_is_reported_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its exception quoted the key: list_models, query_models' refusal and the warning log showed it whole."""
    environ = {"MYHOST_APIKEY": "LEAKCANARY-myhost-1234"}
    monkeypatch.setattr("os.environ", environ)
    sys.modules.pop("tests.core.plugin_reading_its_key", None)
    entry = EntryPoint(name="myhost", value="tests.core.plugin_reading_its_key:SPEC", group=ENTRY_POINT_GROUP)
    registry = Registry([entry], environ=environ)
    reason = registry.status("myhost").reason
    assert reason == (
        "provider 'myhost' failed to load: ValueError: 1 validation error for MyhostSettings\napi_key\n"
        "  input_value='[REDACTED]'"
    )


def test_keys_and_urls_are_read_without_surrounding_whitespace() -> None:
    """A key pasted with its newline made every call fail in the transport ("internal") while `models` said
    configured; a variable of only whitespace is not set."""
    registry = Registry(
        installed(),
        environ={"OPENAI_API_KEY": " sk-abc\n", "OPENAI_BASE_URL": "http://h:1/v1 \n", "ANTHROPIC_API_KEY": " \n"},
    )
    config = registry.config("openai")
    assert config.api_key is not None and config.api_key.reveal() == "sk-abc"
    assert config.base_url == "http://h:1/v1"
    assert registry.status("anthropic").reason == "ANTHROPIC_API_KEY is not set"
    assert "sk-abc" in registry.secrets()


def test_gemini_takes_google_api_key_first_as_google_does() -> None:
    registry = Registry(installed(), environ={"GEMINI_API_KEY": "older", "GOOGLE_API_KEY": "newer"})
    config = registry.config("gemini")
    assert config.api_key is not None and config.api_key.reveal() == "newer"


def test_missing_keys_say_which_variable_to_set() -> None:
    registry = Registry(installed(), environ={"GOOGLE_API_KEY": "g"})
    assert registry.status("openai").reason == "OPENAI_API_KEY is not set"
    assert registry.status("gemini").reason == "GOOGLE_API_KEY is set"  # the fallback variable counts
    assert registry.status("ollama").reason == "no key needed"
    with pytest.raises(RegistryError, match="OPENAI_API_KEY is not set"):
        registry.config("openai")
    with pytest.raises(RegistryError, match="unknown provider 'nope'"):
        registry.spec("nope")


def test_base_urls_come_from_the_usual_variables() -> None:
    environ = {"OPENAI_API_KEY": "sk", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1/", "OLLAMA_HOST": "http://box:11434"}
    registry = Registry(installed(), environ=environ)
    assert registry.config("openai").base_url == "http://127.0.0.1:9/v1"
    assert registry.config("ollama").base_url == "http://box:11434"


def test_custom_providers_reuse_a_dialect() -> None:
    custom = {
        "local": CustomProvider(base_url="http://127.0.0.1:8080/v1"),
        "corp": CustomProvider(base_url="https://llm.corp/v1", api_key_env="CORP_KEY", dialect="anthropic"),
    }
    registry = Registry(installed(), environ={}, custom=custom)
    assert registry.status("local").configured and registry.status("local").source == "settings"
    assert registry.spec("local").adapter is registry.spec("openai").adapter
    assert registry.spec("corp").adapter is registry.spec("anthropic").adapter
    assert registry.status("corp").reason == "CORP_KEY is not set"


def test_custom_provider_names_are_checked() -> None:
    with pytest.raises(RegistryError, match=r"custom_providers\.openai: the name is taken"):
        Registry(installed(), environ={}, custom={"openai": CustomProvider(base_url="http://x")})
    with pytest.raises(RegistryError, match=r"custom_providers\.Bad Name"):
        Registry(installed(), environ={}, custom={"Bad Name": CustomProvider(base_url="http://x")})


def test_a_price_key_naming_no_provider_is_refused_with_the_fix() -> None:
    """It never matched: the table's list price was charged with nothing to say the negotiated one was ignored."""
    price = {"input_per_mtok": 1, "output_per_mtok": 1}

    def registry(keys: list[str], **settings: object) -> Registry:
        configured = Settings(_env_file=None, model_prices=dict.fromkeys(keys, price), **settings)
        return Registry.from_settings(configured, {}, [*installed(), plugin("acme", "ACME")])

    with pytest.raises(RegistryError) as info:
        registry(["openai/*", "OpenAI/gpt-4o-mini"])
    assert str(info.value).startswith(
        "AI_GATEWAY_MODEL_PRICES: key 'OpenAI/gpt-4o-mini' names no provider 'OpenAI' (write openai/...); "
        "provider names: acme, anthropic,"
    )
    with pytest.raises(RegistryError, match=r"key 'opnai/\*' names no provider 'opnai' \(did you mean openai\?\)"):
        registry(["opnai/*"])
    with pytest.raises(RegistryError, match=r"key 'zzz/\*' names no provider 'zzz' \(check the spelling\)"):
        registry(["zzz/*"])
    # A provider turned off is still one: turning it off must not make its prices refuse to start.
    registry(["acme/*", "groq/x"], load_plugins=False, disabled_providers="groq")
    local = CustomProvider(base_url="http://127.0.0.1:8080/v1")
    registry(["local/*"], custom_providers={"local": local})
    with pytest.raises(RegistryError, match="names no provider 'local'"):
        registry(["local/*"])


@pytest.mark.parametrize(
    ("models", "settings", "message"),
    [
        ("mock/echo,opnai/gpt-4o", {}, "AI_GATEWAY_DEFAULT_MODELS[1]: 'opnai/gpt-4o' names no provider 'opnai' (did "
                                        "you mean openai?); provider names: acme, anthropic,"),
        ("OpenAI/gpt-4o", {}, "AI_GATEWAY_DEFAULT_MODELS[0]: 'OpenAI/gpt-4o' names no provider 'OpenAI' (write "
                              "openai/gpt-4o)"),
        ("gpt-4o", {}, "AI_GATEWAY_DEFAULT_MODELS[0]: 'gpt-4o' is not provider/model (e.g. openai/gpt-4o-mini)"),
        ("groq/llama", {"disabled_providers": "groq"},
         "AI_GATEWAY_DEFAULT_MODELS[0]: 'groq/llama' names provider 'groq', which AI_GATEWAY_DISABLED_PROVIDERS "
         "turns off"),
        ("acme/m", {"load_plugins": False},
         "AI_GATEWAY_DEFAULT_MODELS[0]: 'acme/m' names provider 'acme', a plugin AI_GATEWAY_LOAD_PLUGINS=false "
         "leaves unloaded"),
    ],
)  # fmt: skip
def test_a_default_model_no_call_could_use_stops_start_up_with_the_fix(
    models: str, settings: dict[str, object], message: str
) -> None:
    """Every call naming no models failed, while the server ran and `models` showed the typo as the default."""
    with pytest.raises(RegistryError) as info:
        Registry.from_settings(
            Settings(_env_file=None, default_models=models, **settings), {}, [*installed(), plugin("acme", "ACME")]
        )
    assert str(info.value).startswith(message)


def test_a_default_model_of_a_provider_without_its_key_is_left_to_the_call() -> None:
    """Only names are checked at start: a default whose key is missing is refused by the call that uses it, which
    says so (tests/integration/test_inmemory.py)."""
    configured = Settings(_env_file=None, default_models="anthropic/claude-haiku-4-5,acme/m")
    registry = Registry.from_settings(configured, {}, [*installed(), plugin("acme", "ACME")])
    status = registry.status("anthropic")
    assert (status.configured, status.reason) == (False, "ANTHROPIC_API_KEY is not set")


@pytest.mark.parametrize(
    ("custom", "loop"),
    [
        ({"aa": CustomProvider(base_url="http://x", dialect="aa")}, "aa -> aa"),
        (
            {
                "aa": CustomProvider(base_url="http://x", dialect="bb"),
                "bb": CustomProvider(base_url="http://y", dialect="aa"),
            },
            "aa -> bb -> aa",
        ),
    ],
    ids=["names itself", "two name each other"],
)
def test_a_custom_provider_whose_dialects_loop_fails_to_load_with_one_line(
    custom: dict[str, CustomProvider], loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Loading it recursed to Python's limit and logged one warning per level, each repeating the chain (~5 MB)."""
    registry = Registry(installed(), environ={}, custom=custom)
    status = registry.status("aa")
    assert not status.configured
    assert status.reason == (
        f"provider 'aa' failed to load: RegistryError: AI_GATEWAY_CUSTOM_PROVIDERS: the dialect of 'aa' goes round "
        f"in a loop ({loop}) and never reaches a built-in or plugin provider; name one as its dialect"
    )
    with pytest.raises(RegistryError, match="goes round in a loop"):
        registry.config("aa")
    assert [r.getMessage() for r in caplog.records] == [status.reason]
    assert registry.status("openai").source == "built-in"  # the others load as before


def test_a_custom_provider_may_take_its_dialect_from_another() -> None:
    custom = {
        "edge": CustomProvider(base_url="http://edge/v1", dialect="corp"),
        "corp": CustomProvider(base_url="https://llm.corp/v1", dialect="anthropic"),
    }
    registry = Registry(installed(), environ={}, custom=custom)
    assert registry.spec("edge").adapter is registry.spec("anthropic").adapter


def test_disabled_providers_disappear_but_still_serve_as_a_dialect() -> None:
    settings = Settings(
        _env_file=None,
        disabled_providers="openai, groq",
        custom_providers={"local": {"base_url": "http://127.0.0.1:8080/v1", "options": {"max_tokens_field": "x"}}},
    )
    registry = Registry.from_settings(settings, {"OPENAI_API_KEY": "sk"}, installed())
    assert "openai" not in registry.names() and "groq" not in registry.names()
    assert "anthropic" in registry.names()
    with pytest.raises(RegistryError, match="disabled"):
        registry.config("openai")
    assert registry.config("local").options == {"max_tokens_field": "x"}
    assert registry.spec("local").adapter.dialect == "openai"


def test_secrets_cover_every_credential_in_the_environment() -> None:
    custom = {"corp": CustomProvider(base_url="https://llm.corp/v1", api_key_env="CORP_CREDENTIAL")}
    environ = {"OPENAI_API_KEY": "sk-one", "CORP_CREDENTIAL": "c0rp", "MY_TOKEN": "t0k", "HOME": "/root"}
    registry = Registry(installed(), environ=environ, custom=custom)
    assert set(registry.secrets()) == {"sk-one", "c0rp", "t0k"}


def test_secrets_cover_credentials_in_headers_and_base_urls() -> None:
    """A custom host's ``api-key`` header and a base URL's ``?api-key=`` are in no key variable."""
    headers = {"extra_headers": {"api-key": "azure-header-secret", "X-Title": "my app"}}
    custom = {"azure": CustomProvider(base_url="https://a.corp/v1?api-key=azure-query-secret", options=headers)}
    environ = {"OPENAI_BASE_URL": "https://proxy/v1?token=proxy-token", "OPENAI_API_KEY": "sk-one"}
    registry = Registry(installed(), environ=environ, custom=custom)
    assert set(registry.secrets()) == {"sk-one", "azure-header-secret", "azure-query-secret", "proxy-token"}


@pytest.mark.parametrize(
    ("environ", "custom", "name", "reason"),
    [
        (
            {"OPENAI_API_KEY": "sk", "OPENAI_BASE_URL": "http://me:pa55word@proxy:8080/v1"},
            {},
            "openai",
            "OPENAI_BASE_URL holds a user:password@, which is not sent; put the key in OPENAI_API_KEY",
        ),
        (
            {},
            {"corp": CustomProvider(base_url="https://me:pa55word@llm.corp/v1", api_key_env="CORP_KEY")},
            "corp",
            "its base_url holds a user:password@, which is not sent; put the key in CORP_KEY",
        ),
        (  # a "/" in the password: urlsplit reads it as a path, and the provider passed for configured
            {"OPENAI_API_KEY": "sk", "OPENAI_BASE_URL": "https://me:pa55word/x@proxy/v1"},
            {},
            "openai",
            "OPENAI_BASE_URL holds a user:password@, which is not sent; put the key in OPENAI_API_KEY",
        ),
        (  # a bare token as the userinfo: it was listed as given
            {"OPENAI_API_KEY": "sk", "OPENAI_BASE_URL": "https://pa55word@proxy/v1"},
            {},
            "openai",
            "OPENAI_BASE_URL holds a token@, which is not sent; put the key in OPENAI_API_KEY",
        ),
    ],
)
def test_a_base_url_with_a_password_is_refused_with_the_fix(
    environ: dict[str, str], custom: dict[str, CustomProvider], name: str, reason: str
) -> None:
    """Sent as is, every call failed in the transport ("adapter error (ValueError)"), and list_models showed the
    password. The provider is not configured, says why, and shows its URL redacted."""
    status = Registry(installed(), environ=environ, custom=custom).status(name)
    assert (status.configured, status.reason) == (False, reason)
    assert status.base_url is not None and "pa55word" not in status.base_url and "****@" in status.base_url


def test_only_hosts_from_settings_carry_their_dialect_and_urls_keep_their_query() -> None:
    """A host's name does not say which API it speaks (a built-in's does): the dialect joins its cache key. And
    a base URL's query (Azure's ?api-version=) stays after the endpoint's path, not before it."""
    custom = {"corp": CustomProvider(base_url="https://llm.corp/openai/deployments/d?api-version=2024-06-01")}
    registry = Registry(installed(), environ={"OPENAI_API_KEY": "sk"}, custom=custom)
    corp, openai = registry.config("corp"), registry.config("openai")
    assert (corp.dialect, openai.dialect) == ("openai", None)
    assert (
        corp.url("/chat/completions") == "https://llm.corp/openai/deployments/d/chat/completions?api-version=2024-06-01"
    )
    assert openai.url("/chat/completions") == "https://api.openai.com/v1/chat/completions"
