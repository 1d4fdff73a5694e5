"""Built-in provider adapters: one module per API dialect.

These modules are plugins. They import only the public contract of
``ai_gateway`` (``ai_gateway.types``, ``ai_gateway.errors``,
``ai_gateway.adapter``, ``ai_gateway.secrets``) and are found by the core
through the ``ai_gateway.providers`` entry points, like any third-party adapter.
"""
