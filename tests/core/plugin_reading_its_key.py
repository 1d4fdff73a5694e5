"""A plugin that checks its key when imported and fails quoting it, as a pydantic model of its settings does."""

import os

raise ValueError(f"1 validation error for MyhostSettings\napi_key\n  input_value={os.environ['MYHOST_APIKEY']!r}")
