"""Evaluation runs: a JSONL dataset through the gateway, one results line per (row, sample).

- :mod:`~ai_gateway.evaluation.dataset`: reading and checking the dataset and an earlier results file;
- :mod:`~ai_gateway.evaluation.runner`: the bounded-concurrency, resumable run;
- :mod:`~ai_gateway.evaluation.summary`: per-model statistics (the ``run_eval`` result);
- :mod:`~ai_gateway.evaluation.console`: ``ai-gateway eval`` (progress bar, summary table);
- :mod:`~ai_gateway.evaluation.tool`: the ``run_eval`` MCP tool.

See docs/evaluation.md. This package file imports nothing: the server imports only ``summary`` (for
``run_eval``'s result type), and rich and fastmcp are imported when a command needs them.
"""
