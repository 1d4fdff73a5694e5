"""A plugin whose author wrote api_key_env as a string, not a tuple: refused when it loads."""

from __future__ import annotations

from ai_gateway.adapter import ProviderSpec
from tests.core.plugin_example import EchoHttpAdapter

STRKEY = ProviderSpec(name="strkey", adapter=EchoHttpAdapter, base_url="https://x", api_key_env="STRKEY_API_KEY")  # type: ignore[arg-type]
