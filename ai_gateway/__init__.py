"""ai-gateway: one MCP server that puts many LLMs behind one tool.

Kept import-light on purpose: the stdio server's start-up time is a user-facing
number, so nothing heavy is imported here.
"""

__version__ = "0.1.0"
