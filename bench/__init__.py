"""The performance benchmark: ``scripts/bench`` (``python -m bench``).

It starts its own loopback servers (moto S3, the service and a passthrough
app, both under the Procfile's gunicorn settings), measures the service side
by side with the floors beneath it, stops everything, and writes
``docs/PERFORMANCE.md`` with PNG plots. Figures only: nothing here passes or
fails on timing.
"""
