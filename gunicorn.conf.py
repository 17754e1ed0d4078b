"""Gunicorn settings for the Procfile (``gunicorn -c gunicorn.conf.py wsgi:app``).

Threaded workers: every open git-watch WebSocket holds one thread for its
lifetime, so capacity for sockets is workers x threads, minus the threads
uploads and downloads need. Raise WEB_THREADS (or WEB_CONCURRENCY) for more.
"""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "64"))
# A WebSocket is a request that never ends; the gthread worker heartbeats
# from its main loop, so this bounds a stuck worker, not a long socket.
timeout = 60
graceful_timeout = 20
keepalive = 5
accesslog = None
