"""The real servers tests, benchmarks and the load test start: PostgreSQL, moto, nginx, Chromium, gunicorn."""
