"""``make bench``: the request-path benchmark (direct engine vs router vs gateway + router).

``python -m bench.run`` starts everything it needs under a temporary directory,
drives load with ``wrk`` (and an asyncio client where wrk cannot measure what is
asked), prints a table and writes it to ``docs/benchmarks.md``.
"""
