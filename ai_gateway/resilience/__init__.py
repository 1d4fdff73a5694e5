"""What keeps provider calls honest under failure: deadline, retries, budget, breakers, shedding, health.

Each module holds one mechanism; :mod:`ai_gateway.dispatch` composes them around
every provider attempt. None of them knows a vendor: they read only an error's
``retryable`` and ``trips_breaker`` and the provider's name.
"""
