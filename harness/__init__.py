"""What tests, benchmarks and the load test share: the real servers they start (PostgreSQL, moto, nginx,
Chromium, gunicorn) and the images they send (harness/imaging.py, harness/image_corpus.py)."""
