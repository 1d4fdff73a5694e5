"""The response cache: one entry per (provider instance, model, request, sample), never a dependency.

``key.py`` says what identifies an answer, ``envelope.py`` how it is stored,
``memory.py`` and ``redis_backend.py`` where, and ``store.py`` when a call may
read or write it (and how identical concurrent calls share one provider call).
"""
