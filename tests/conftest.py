"""Test-wide set-up: no network for fastmcp, no banner, and a hermetic environment.

Settings are always built with ``_env_file=None`` and providers with an explicit
environment, so a developer's real keys or ``.env`` never leak into a test.
"""

from __future__ import annotations

import os

# Before fastmcp is imported anywhere: no update check, no banner, our logging.
os.environ["FASTMCP_CHECK_FOR_UPDATES"] = "off"
os.environ["FASTMCP_SHOW_SERVER_BANNER"] = "false"
os.environ["FASTMCP_LOG_ENABLED"] = "false"
for _name in [n for n in os.environ if n.startswith("AI_GATEWAY_")]:
    del os.environ[_name]
