"""Cache keys: every output-affecting field makes its own entry; nothing else does; no API key ever appears."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest

from ai_gateway.cache.key import KEY_SCHEMA, answer_prefix, cache_key, canonical, error_key, lease_key
from ai_gateway.types import ChatRequest, Message
from tests.cache.conftest import OpenGateway
from tests.cache.support import MODEL, PROMPT, CacheFake, Reply
from tests.fake_provider import Scenario
from tests.integration.conftest import KEYS
from tests.redis_harness import RedisTarget

VENDOR = MODEL.partition("/")[2]
BASE_REQUEST = ChatRequest(
    messages=(
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello"),
        Message("user", PROMPT),
    ),
    system="You are a geographer.",
    temperature=0.0,
    max_tokens=50,
)
BASE = {
    "provider": "openai",
    "base_url": "http://127.0.0.1:1/v1",
    "model": "gpt-4o-mini",
    "request": BASE_REQUEST,
    "sample": 0,
}
M = BASE_REQUEST.messages
VARIANTS: dict[str, dict[str, Any]] = {
    "provider": {"provider": "groq"},
    "base_url": {"base_url": "http://127.0.0.1:2/v1"},
    "model": {"model": "gpt-4o"},
    "system": {"request": replace(BASE_REQUEST, system="You are a historian.")},
    "system omitted": {"request": replace(BASE_REQUEST, system=None)},
    "a message's role": {"request": replace(BASE_REQUEST, messages=(M[0], M[1], Message("user", "Hello"), M[3]))},
    "a message's content": {"request": replace(BASE_REQUEST, messages=(*M[:3], Message("user", PROMPT + "!")))},
    "message order": {"request": replace(BASE_REQUEST, messages=(M[0], M[3], M[2], M[1]))},
    "a message fewer": {"request": replace(BASE_REQUEST, messages=M[:1] + M[3:])},
    "a system message's content": {"request": replace(BASE_REQUEST, messages=(Message("system", "Be long."), *M[1:]))},
    "temperature": {"request": replace(BASE_REQUEST, temperature=0.7)},
    "temperature omitted": {"request": replace(BASE_REQUEST, temperature=None)},
    "max_tokens": {"request": replace(BASE_REQUEST, max_tokens=51)},
    "max_tokens omitted": {"request": replace(BASE_REQUEST, max_tokens=None)},
    "sample": {"sample": 1},
    "sample omitted": {"sample": None},
}


def key(namespace: str = "ns", **changes: Any) -> str:
    args = {**BASE, **changes}
    return cache_key(namespace, args["provider"], args["base_url"], args["model"], args["request"], args["sample"])


# ---------------------------------------------------------------------------- the key function
@pytest.mark.parametrize("field", list(VARIANTS))
def test_changing_any_one_output_affecting_field_changes_the_key(field: str) -> None:
    assert key(**VARIANTS[field]) != key()


def test_every_variant_is_its_own_entry() -> None:
    keys = [key(), *(key(**change) for change in VARIANTS.values())]
    assert len(set(keys)) == len(keys)


def test_equal_inputs_give_the_same_key() -> None:
    rebuilt = ChatRequest(
        messages=tuple(Message(m.role, m.content) for m in M),
        system=BASE_REQUEST.system,
        temperature=0.0,
        max_tokens=50,
    )
    assert key(request=rebuilt) == key()


def test_the_key_is_namespaced_versioned_and_hashed() -> None:
    assert re.fullmatch(rf"ns:v{KEY_SCHEMA}:[0-9a-f]{{64}}", key())
    assert key(namespace="other") != key()
    assert key(namespace="other").startswith("other:")


def test_lease_and_error_keys_sit_beside_the_answers_not_under_their_prefix() -> None:
    """The near cache watches the answers' prefix: taking a lease must not send every process a message."""
    answer = key(namespace="a:b")
    digest = answer.rpartition(":")[2]
    assert answer.startswith(answer_prefix("a:b"))
    assert lease_key(answer) == f"a:b:lease:v{KEY_SCHEMA}:{digest}"
    assert error_key(answer) == f"a:b:error:v{KEY_SCHEMA}:{digest}"
    assert not lease_key(answer).startswith(answer_prefix("a:b"))
    assert not error_key(answer).startswith(answer_prefix("a:b"))


@pytest.mark.parametrize("kind", ["lease", "error"])
def test_a_namespace_named_after_a_kind_keeps_its_answers_off_another_namespace_s_keys(kind: str) -> None:
    """Namespace "a:lease" kept its answers under "a:lease:v1:<hash>", exactly where namespace "a" keeps its leases:
    a's calls then waited on a lease nobody held, until their deadline. Likewise ":error"."""
    beside = lease_key if kind == "lease" else error_key
    for namespace in ("a", "a:b", f"a:{kind}"):
        for changes in ({}, *VARIANTS.values()):
            assert key(namespace=f"{namespace}:{kind}", **changes) != beside(key(namespace=namespace, **changes))
    assert key(namespace=f"a:{kind}").startswith(answer_prefix(f"a:{kind}"))
    # Any other namespace keeps the hash it always had: no stored answer is orphaned by the fix.
    digest = key().rpartition(":")[2]
    assert [key(namespace=n).rpartition(":")[2] for n in ("a", "a:b", f"a:{kind}s", f"{kind}:a")] == [digest] * 4


def test_a_set_among_a_providers_options_is_spelled_by_its_sorted_members() -> None:
    """Keyed by its str(), a set's members came in the order of the process's hash seed."""
    args = (BASE["provider"], BASE["base_url"], BASE["model"], BASE_REQUEST, 0)
    words = frozenset({"END", "STOP", "###", "Observation:"})
    assert '"options":{"stop_words":["###","END","Observation:","STOP"]}' in canonical(*args, {"stop_words": words})
    mixed = {"ids": {3, "a", (1, 2), frozenset({"y", "x"})}}  # sorted by each member's own canonical spelling
    assert '"options":{"ids":["a",3,["x","y"],[1,2]]}' in canonical(*args, mixed)
    assert cache_key("ns", *args, {"stop_words": set(sorted(words, reverse=True))}) == cache_key(
        "ns", *args, {"stop_words": words}
    )


def test_a_set_option_has_the_same_key_in_every_gateway_process() -> None:
    """Processes differ in their hash seed (PYTHONHASHSEED, random by default): each computed another key."""
    script = (
        "from ai_gateway.cache.key import cache_key\n"
        "from ai_gateway.types import ChatRequest, Message\n"
        "request = ChatRequest((Message('user', 'hi'),))\n"
        "options = {'stop_words': frozenset({'END', 'STOP', '###', 'Observation:', 'Final', 'Answer'})}\n"
        "print(cache_key('ns', 'plug', 'http://h/v1', 'm', request, None, options))\n"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for seed in range(4)
    }
    assert len(keys) == 1, keys


def test_an_omitted_temperature_is_not_temperature_zero() -> None:
    assert key(request=replace(BASE_REQUEST, temperature=None)) != key(request=replace(BASE_REQUEST, temperature=0.0))


def test_an_integer_temperature_is_the_same_entry_as_the_equal_float() -> None:
    assert key(request=replace(BASE_REQUEST, temperature=0)) == key(request=replace(BASE_REQUEST, temperature=0.0))


def test_a_system_prompt_given_as_the_first_message_is_the_same_entry_as_one_given_as_system() -> None:
    """Every adapter sends both alike (the leading system message, or one system prompt), so one answer serves both:
    an agent passing ``system`` and a dataset row opening with a system message need not pay twice."""
    user = Message("user", PROMPT)
    as_system = key(request=ChatRequest(messages=(user,), system="Be brief."))
    assert key(request=ChatRequest(messages=(Message("system", "Be brief."), user))) == as_system
    # With both, `system` comes first on the wire, then the system messages: the same as listing all of them.
    both = key(request=ChatRequest(messages=(Message("system", "And polite."), user), system="Be brief."))
    listed = (Message("system", "Be brief."), Message("system", "And polite."), user)
    assert key(request=ChatRequest(messages=listed)) == both
    # Not the same wire: two system messages are not one joined, and one after the user's is not the first.
    assert key(request=ChatRequest(messages=(user,), system="Be brief.\n\nAnd polite.")) != both
    assert key(request=ChatRequest(messages=(user, Message("system", "Be brief.")))) != as_system
    assert key(request=ChatRequest(messages=(Message("system", "Be long."), user))) != as_system


def test_a_key_is_stable_across_releases() -> None:
    """Pinned: a change to the encoding would orphan every stored answer, so it must come with a new KEY_SCHEMA."""
    request = ChatRequest(
        messages=(Message("system", "Be brief."), Message("user", "Wie heißt die Hauptstadt?")),
        system="You are a geographer.",
        temperature=0.0,
        max_tokens=50,
    )
    args = ("openai", "http://127.0.0.1:1/v1", "gpt-4o-mini", request, 0)
    assert KEY_SCHEMA == 1
    assert canonical(*args) == (
        '{"base_url":"http://127.0.0.1:1/v1","messages":[["system","Be brief."],["user","Wie heißt die Hauptstadt?"]],'
        '"model":"gpt-4o-mini","params":{"max_tokens":50,"temperature":0},"provider":"openai","sample":0,'
        '"schema":1,"system":"You are a geographer."}'
    )
    assert cache_key("ns", *args) == "ns:v1:" + hashlib.sha256(canonical(*args).encode()).hexdigest()
    assert cache_key("ns", *args) == "ns:v1:e97befb1fbd597adc1910c64022c32da53585042976ae4d895c3dc622218ac3d"


def test_a_providers_options_join_the_key_in_any_order() -> None:
    args = (BASE["provider"], BASE["base_url"], BASE["model"], BASE_REQUEST, 0)
    plain = cache_key("ns", *args)
    assert cache_key("ns", *args, {}) == plain  # a provider without options keeps its keys
    short = cache_key("ns", *args, {"default_max_tokens": 100, "x": 1})
    assert short != plain
    assert cache_key("ns", *args, {"default_max_tokens": 200, "x": 1}) != short
    assert cache_key("ns", *args, {"x": 1, "default_max_tokens": 100}) == short


def test_every_option_but_the_declared_ones_is_cache_material() -> None:
    from ai_gateway.adapter import ProviderConfig
    from providers.anthropic import AnthropicAdapter
    from providers.openai import OpenAIChatAdapter

    options = {"max_tokens_field": "max_completion_tokens", "extra_headers": {"api-key": "sk-secret"}}
    assert OpenAIChatAdapter(ProviderConfig("h", "http://h", options=options)).cache_options() == {
        "max_tokens_field": "max_completion_tokens"
    }
    assert AnthropicAdapter(ProviderConfig("h", "http://h", options={"default_max_tokens": 9})).cache_options() == {
        "default_max_tokens": 9
    }
    # Only the OpenAI dialect declared its headers outside the key: another dialect's credential-holding option (a
    # custom host's headers, unread by it) was hashed into the key, which never holds a key, not even hashed.
    with_headers = {"default_max_tokens": 9, **options}
    assert AnthropicAdapter(ProviderConfig("h", "http://h", options=with_headers)).cache_options() == {
        "default_max_tokens": 9,
        "max_tokens_field": "max_completion_tokens",
    }
    # A host from settings, renamed to another dialect at the same URL: the Anthropic one sends a max_tokens the
    # OpenAI one does not, and its answer was served for the other's question.
    as_openai = OpenAIChatAdapter(ProviderConfig("corp", "http://h", dialect="openai")).cache_options()
    as_anthropic = AnthropicAdapter(ProviderConfig("corp", "http://h", dialect="anthropic")).cache_options()
    assert (as_openai, as_anthropic) == ({"dialect": "openai"}, {"dialect": "anthropic"})
    args = ("ns", "corp", "http://h", BASE["model"], BASE_REQUEST, 0)
    assert cache_key(*args, as_openai) != cache_key(*args, as_anthropic)


def test_a_credential_in_the_base_url_is_no_part_of_the_key() -> None:
    """A proxy reached as https://user:token@host or with ?api-key=... must not hash its credential into keys."""
    args = ("openai", BASE["model"], BASE_REQUEST, 0)
    forms = {
        url: canonical(args[0], url, *args[1:])
        for url in (
            "https://user:sk-secret-1@proxy.example/v1",
            "https://user:sk-secret-2@proxy.example/v1",
            "https://proxy.example/v1?api-key=sk-secret-1&api-version=2024-06-01",
        )
    }
    assert not any("sk-secret" in text for text in forms.values())
    first, second, query = forms.values()
    assert first == second  # another token, the same endpoint: the same entries
    assert '"base_url":"https://proxy.example/v1?api-key=&api-version=2024-06-01"' in query
    assert canonical("openai", "https://proxy.example/v1?api-version=2025-01-01", *args[1:]) != query


def test_the_canonical_form_holds_no_api_key() -> None:
    text = canonical("openai", "http://x/v1", "m", BASE_REQUEST, 0)
    assert "key" not in text.lower()


# ---------------------------------------------------------------------------- through the MCP tool
BASE_ARGS: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": PROMPT},
    ],
    "models": [MODEL],
    "system": "You are a geographer.",
    "temperature": 0,
    "max_tokens": 50,
    "sample": 0,
}
MCP_VARIANTS: dict[str, dict[str, Any]] = {
    "provider": {"models": ["groq/gpt-4o-mini"]},  # the same vendor model name at another provider
    "model": {"models": ["openai/gpt-4o"]},
    "system": {"system": "You are a historian."},
    "system omitted": {"system": None},
    "a message's role": {
        "messages": [BASE_ARGS["messages"][0], {"role": "user", "content": "Hello"}, BASE_ARGS["messages"][2]]
    },
    "a message's content": {"messages": [*BASE_ARGS["messages"][:2], {"role": "user", "content": PROMPT + "?"}]},
    "message order": {"messages": [BASE_ARGS["messages"][2], BASE_ARGS["messages"][1], BASE_ARGS["messages"][0]]},
    "temperature": {"temperature": 0.5},
    "temperature omitted": {"temperature": None},
    "max_tokens": {"max_tokens": 49},
    "sample": {"sample": 1},
    "sample omitted": {"sample": None},
}


def args_with(change: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in {**BASE_ARGS, **change}.items() if v is not None}


@pytest.mark.parametrize("field", list(MCP_VARIANTS))
async def test_a_call_differing_in_one_field_misses(open_gateway: OpenGateway, fake: CacheFake, field: str) -> None:
    async with open_gateway() as gw:
        base = await gw.call(dict(BASE_ARGS))
        await gw.settle()
        variant = await gw.call(args_with(MCP_VARIANTS[field]))
        await gw.settle()
        base_again = await gw.call(dict(BASE_ARGS))

    assert base.only["status"] == variant.only["status"] == "ok"
    assert variant.only["cached"] is False
    assert base_again.only["cached"] is True  # the variant did not overwrite the base entry
    assert fake.count() == 2


async def test_reordered_json_keys_hit(open_gateway: OpenGateway, fake: CacheFake) -> None:
    async with open_gateway() as gw:
        first = await gw.call(dict(BASE_ARGS))
        await gw.settle()
        second = await gw.call(dict(reversed(list(BASE_ARGS.items()))))

    assert list(dict(reversed(list(BASE_ARGS.items())))) != list(BASE_ARGS)
    assert first.only["cached"] is False and second.only["cached"] is True
    assert second.answer == first.answer
    assert fake.count() == 1


async def test_temperature_zero_as_integer_or_float_in_json_is_one_entry(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    async with open_gateway() as gw:
        await gw.ask(temperature=0)
        again = await gw.ask(temperature=0.0)

    assert again.only["cached"] is True
    assert fake.count() == 1


async def test_a_system_prompt_as_an_argument_or_as_the_first_message_is_one_entry(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    async with open_gateway() as gw:
        first = await gw.call({"prompt": PROMPT, "system": "Be brief.", "models": [MODEL]})
        await gw.settle()
        again = await gw.call(
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}],
             "models": [MODEL]}
        )  # fmt: skip

    assert first.only["cached"] is False and again.only["cached"] is True
    assert again.answer == first.answer
    assert fake.count() == 1


async def test_a_sampled_request_without_a_sample_index_is_never_read_or_written(
    open_gateway: OpenGateway, fake: CacheFake
) -> None:
    async with open_gateway() as gw:
        replies = [await gw.ask(temperature=0.8) for _ in range(2)]
        only = await gw.ask(temperature=0.8, cache="only")
        assert gw.gateway.cache.stats.writes == 0 and len(gw.memory()) == 0

    assert [r.only["cached"] for r in replies] == [False, False]
    assert fake.count(VENDOR) == 2
    assert only.is_error and only.only["error"]["code"] == "cache_miss"


async def test_sample_indexes_are_distinct_entries_that_replay(open_gateway: OpenGateway, fake: CacheFake) -> None:
    async with open_gateway() as gw:
        firsts = [await gw.ask(temperature=0.8, sample=i) for i in (0, 1)]
        replays = [await gw.ask(temperature=0.8, sample=i) for i in (0, 1)]

    assert [r.only["cached"] for r in firsts] == [False, False]
    assert [r.only["cached"] for r in replays] == [True, True]
    assert fake.count(VENDOR) == 2


# ---------------------------------------------------------------------------- no API key, anywhere
SECRETS = [*KEYS.values()]
SECRET_FORMS = [form for s in SECRETS for form in (s, hashlib.sha256(s.encode()).hexdigest(), s[-16:])]
EVERY_DIALECT = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5", "gemini/gemini-2.5-flash", "groq/llama-3.3-70b"]


def assert_no_secret(blobs: list[bytes]) -> None:
    assert blobs
    for blob in blobs:
        for form in SECRET_FORMS:
            assert form.encode() not in blob, f"an API key (or its hash) was written to the cache: {blob[:80]!r}"


async def ask_every_dialect(gw: Any) -> None:
    """Answers from every dialect, plus an error whose vendor message quotes the key."""
    for model in EVERY_DIALECT:
        reply = await gw.ask(models=[model], temperature=0, max_tokens=20)
        assert reply.only["status"] == "ok"
    reply = await gw.ask(models=["openai/leaky"])
    assert reply.only["status"] == "error"


async def test_no_key_or_value_in_the_embedded_cache_holds_an_api_key(
    open_gateway: OpenGateway, fake: CacheFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.set("leaky", Scenario.error("auth", message=f"Incorrect API key provided: {KEYS['OPENAI_API_KEY']}"))
    written: list[bytes] = []
    async with open_gateway() as gw:
        backend = gw.memory()
        real_set = backend.set

        async def recording_set(key: str, value: bytes, ttl_s: float, *, replace: bool = False) -> None:
            written.extend([key.encode(), value])
            await real_set(key, value, ttl_s, replace=replace)

        monkeypatch.setattr(backend, "set", recording_set)
        await ask_every_dialect(gw)

    assert len(written) == 2 * len(EVERY_DIALECT)
    assert_no_secret(written)


async def test_no_key_or_value_in_redis_holds_an_api_key(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    fake.set("leaky", Scenario.error("auth", message=f"Incorrect API key provided: {KEYS['OPENAI_API_KEY']}"))
    async with open_gateway(**redis_target.settings()) as gw:
        await ask_every_dialect(gw)
        items = redis_target.items()  # read before the published error (short TTL) expires

    assert len([k for k in items if k.count(b":") == 2]) == len(EVERY_DIALECT)  # the answers themselves
    assert_no_secret([blob for k, v in items.items() for blob in (k, v or b"")])


# ---------------------------------------------------------------------------- a provider's options
def host(dialect: str, base_url: str, options: dict[str, Any]) -> dict[str, Any]:
    """Settings declaring one custom provider, ``house``, at the fake."""
    return {"custom_providers": {"house": {"base_url": base_url, "dialect": dialect, "options": options}}}


async def ask_in_a_new_gateway(open_gateway: OpenGateway, settings: dict[str, Any], model: str) -> Reply:
    async with open_gateway(**settings) as gw:
        reply = await gw.call({"prompt": PROMPT, "models": [model], "temperature": 0})
        await gw.settle()
    assert reply.only["status"] == "ok"
    return reply


async def test_an_answer_made_under_another_provider_option_is_not_served(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    """Gateways sharing Redis, restarted with another default max_tokens: the old answer was made under the old one."""
    replies = [
        await ask_in_a_new_gateway(
            open_gateway,
            {**redis_target.settings(), **host("anthropic", fake.url, {"default_max_tokens": n})},
            "house/claude-haiku-4-5",
        )
        for n in (100, 200, 100)
    ]
    assert [r.only["cached"] for r in replies] == [False, False, True]
    assert [c.body["max_tokens"] for c in fake.calls_for("claude-haiku-4-5")] == [100, 200]


async def test_extra_headers_stay_out_of_the_key(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    """They name the caller or carry a credential (Azure's api-key header): never key material."""
    replies = [
        await ask_in_a_new_gateway(
            open_gateway,
            {**redis_target.settings(), **host("openai", f"{fake.url}/v1", {"extra_headers": {"api-key": secret}})},
            "house/gpt-4o-mini",
        )
        for secret in ("sk-azure-secret-1", "sk-azure-secret-2")
    ]
    assert [r.only["cached"] for r in replies] == [False, True]
    assert fake.calls_for("gpt-4o-mini")[0].headers["api-key"] == "sk-azure-secret-1"
    items = redis_target.items()
    assert items
    assert not any(b"sk-azure" in blob for k, v in items.items() for blob in (k, v or b""))


async def test_a_gateway_is_not_held_up_by_answers_stored_in_a_namespace_named_after_its_leases(
    open_gateway: OpenGateway, fake: CacheFake, redis_target: RedisTarget
) -> None:
    """Gateway "<ns>:lease" stored its answer where gateway "<ns>" looks for a lease: the latter waited for it to be
    released until the end of its deadline, then failed."""
    neighbour = {**redis_target.settings(), "cache_namespace": f"{redis_target.namespace}:lease"}
    async with open_gateway(**neighbour) as gw:
        assert (await gw.ask()).only["status"] == "ok"
    async with open_gateway(**redis_target.settings()) as gw:
        reply = await gw.ask(timeout_s=2)
        peer_waits = gw.gateway.cache.stats.peer_waits

    assert (reply.only["status"], reply.only["cached"]) == ("ok", False), reply.only["error"]
    assert peer_waits == 0
    assert fake.count(VENDOR) == 2
