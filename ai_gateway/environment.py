"""The environment providers are configured from: the process environment over ``.env``.

Provider credentials use the variables users already have (``OPENAI_API_KEY``,
``OLLAMA_HOST``...), so they are read here rather than through the
``AI_GATEWAY_`` settings. A ``.env`` file in the working directory fills in
what the process environment does not set.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values


def load_environ(env_file: str | Path = ".env") -> dict[str, str]:
    values = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if Path(env_file).is_file() else {}
    values.update(os.environ)
    return values
