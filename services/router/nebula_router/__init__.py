"""Nebula router: picks a ready replica for each request and streams the answer through.

Modules: ``table`` (etcd mirrors -> in-memory endpoint table), ``policy`` (pure
filters, scorers and pickers; outlier ejection), ``proxy`` (the raw-ASGI request
path: retries, timeouts, streaming, cancellation), ``app`` (Quart routes for
health, metrics, /v1/models, /debug/endpoints), ``metrics``, ``main`` (CLI),
``server`` (optional uvicorn serving), ``bench`` (routing-overhead benchmark).
"""
