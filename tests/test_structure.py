"""Structural rules that keep the codebase honest: import direction and documented settings."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from ai_gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# The public plugin contract: the only core modules an adapter may import.
CONTRACT = {"ai_gateway.types", "ai_gateway.errors", "ai_gateway.adapter", "ai_gateway.secrets"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_providers_import_only_the_public_contract() -> None:
    offenders = {}
    for path in sorted((ROOT / "providers").rglob("*.py")):
        core = {m for m in imported_modules(path) if m == "ai_gateway" or m.startswith("ai_gateway.")}
        if core - CONTRACT:
            offenders[path.name] = sorted(core - CONTRACT)
    assert offenders == {}


def test_the_contract_does_not_depend_on_the_rest_of_the_core() -> None:
    for name in CONTRACT:
        path = ROOT / (name.replace(".", "/") + ".py")
        core = {m for m in imported_modules(path) if m.startswith("ai_gateway.")}
        assert core <= CONTRACT, f"{name} imports {sorted(core - CONTRACT)}"


def test_the_core_never_imports_providers_directly() -> None:
    for path in sorted((ROOT / "ai_gateway").rglob("*.py")):
        assert not any(m == "providers" or m.startswith("providers.") for m in imported_modules(path)), path


def test_builtin_entry_points_name_real_specs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    eps = pyproject["project"]["entry-points"]["ai_gateway.providers"]
    assert {"openai", "anthropic", "gemini", "ollama", "mock", "together", "groq"} <= set(eps)
    for name, value in eps.items():
        module, _, attr = value.partition(":")
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
        assert re.search(rf"^{attr}\s*=", source, re.M), f"{name}: {value} is not defined"


def test_env_example_lists_every_setting_exactly_once() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    names = [m.group(1) for line in lines if (m := re.match(r"^#?\s*AI_GATEWAY_([A-Z_]+)=", line))]
    expected = {name.upper() for name in Settings.model_fields}
    assert sorted(names) == sorted(expected)


def test_env_example_holds_no_secret() -> None:
    text = (ROOT / ".env.example").read_text()
    for line in text.splitlines():
        key, sep, value = line.lstrip("# ").partition("=")
        if sep and key.endswith(("_API_KEY", "_TOKEN")):
            assert value in ("", "...") or value.endswith("..."), line


def test_env_example_as_a_dotenv_gives_exactly_the_defaults(tmp_path, monkeypatch) -> None:
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    monkeypatch.chdir(tmp_path)
    assert Settings() == Settings(_env_file=None)
    assert Settings().auth_token is None  # an empty token line must not switch auth on


def test_configuration_docs_list_every_setting() -> None:
    documented = set(re.findall(r"`AI_GATEWAY_([A-Z_]+)`", (ROOT / "docs" / "configuration.md").read_text()))
    assert {name.upper() for name in Settings.model_fields} <= documented


def test_cost_is_the_cores_never_an_adapters() -> None:
    """Adapters and the contract know nothing of prices: a spec names its price source, the core computes cost."""
    paths = [*sorted((ROOT / "providers").rglob("*.py")), *(ROOT / (n.replace(".", "/") + ".py") for n in CONTRACT)]
    for path in paths:
        pricing = {m for m in imported_modules(path) if m in ("ai_gateway.pricing", "genai_prices")}
        pricing |= {m for m in imported_modules(path) if m.startswith("genai_prices.")}
        assert not pricing, f"{path.name} imports {sorted(pricing)}"


def test_the_price_table_is_not_imported_at_start_up() -> None:
    """genai-prices takes ~200 ms to import: the server's warm-up loads it in a thread, after start-up."""
    import subprocess
    import sys

    code = "import sys, ai_gateway.server, ai_gateway.cli; print('genai_prices' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_eval_runs_without_importing_the_mcp_stack(tmp_path: Path) -> None:
    """fastmcp and mcp take ~0.5 s to import: ``ai-gateway eval`` runs its rows through Gateway.query
    without them (only ``--via tool`` needs the MCP server), so a replay of 2,000 rows is not half start-up."""
    import json
    import subprocess
    import sys

    dataset = tmp_path / "data.jsonl"
    dataset.write_text('{"prompt": "2+2?", "expected": "4"}\n')
    out = tmp_path / "out.jsonl"
    code = (
        "import sys; from ai_gateway.cli import main\n"
        f"code = main(['eval', {str(dataset)!r}, '--models', 'mock/fixed:4', '--out', {str(out)!r}, '--no-progress'])\n"
        "print(code, sorted({m.split('.')[0] for m in sys.modules} & {'fastmcp', 'mcp', 'starlette'}))"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FASTMCP_CHECK_FOR_UPDATES": "off"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "0 []"
    record = json.loads(out.read_text().splitlines()[0])
    assert record["answer"] == "4"


def test_the_commands_choices_are_the_gateways_own() -> None:
    """The CLI writes its choices out (it parses flags before importing the gateway); a strategy or cache mode added
    to the gateway must reach its flags."""
    from typing import get_args

    from ai_gateway import cli
    from ai_gateway.cache.store import CACHE_MODES
    from ai_gateway.schemas import StrategyName
    from ai_gateway.strategies import STRATEGIES

    assert cli._STRATEGIES == get_args(StrategyName) == tuple(STRATEGIES)
    assert cli._CACHE_MODES == CACHE_MODES
