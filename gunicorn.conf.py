"""Gunicorn settings for the Procfile (``gunicorn -c gunicorn.conf.py wsgi:app``).

Threaded workers serve requests. A git-watch WebSocket holds a thread only
while it is checked; once upgraded it is handed to the worker's event loop
(gitwatch/hub.py), where it costs memory and a file descriptor, never a
thread: sockets do not take what uploads and downloads need.

Logs: gunicorn's own lines use the app's JSON format on stdout; its access
log stays off (the app writes one line per request, see ops/observability.py).

Metrics: workers are processes, so prometheus_client runs in multiprocess
mode, keeping values in files under PROMETHEUS_MULTIPROC_DIR. Set it to an
empty directory of its own (one per gunicorn master; stale files in it are
removed at start), or leave it unset for a temporary one removed at exit.

Shutdown: SIGTERM first closes the worker's watch WebSockets with 1001
"going away" (ops/shutdown.py); worker_exit waits for those close frames.
"""

from __future__ import annotations

import glob
import json
import os
import resource
import shutil
import socket
import tempfile
from typing import TYPE_CHECKING

import gunicorn.glogging
import gunicorn.http.wsgi
import gunicorn.util

if TYPE_CHECKING:  # gunicorn ships no types: these name what its hooks are given
    from gunicorn.arbiter import Arbiter
    from gunicorn.http.message import Request
    from gunicorn.workers.base import Worker

bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "64"))
# The gthread worker heartbeats from its main loop, so this bounds a stuck worker.
timeout = 60
graceful_timeout = 20
keepalive = 5
accesslog = None


class RequestLinesByTheApp(gunicorn.glogging.Logger):
    """gunicorn's logger without its access log: the app writes each request's line itself.

    With a ``logconfig_dict`` gunicorn counts its access log as on and builds
    every request's log atoms, only for the logger to drop them.
    """

    @property
    def access_log_enabled(self) -> bool:
        return bool(self.cfg.accesslog)


logger_class = RequestLinesByTheApp

# gunicorn's control socket sits at one fixed path per user; several instances
# on one host would fight over it, and nothing here uses it.
control_socket_disable = True
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "ops.jsonlog.JsonFormatter"}},
    # gunicorn's warnings about malformed requests quote them: query strings, cookies, tokens.
    "filters": {"scrub": {"()": "ops.jsonlog.ScrubSecrets"}},
    "handlers": {"json": {"class": "ops.jsonlog.JsonLineHandler", "formatter": "json", "filters": ["scrub"]}},
    "root": {"handlers": []},  # the app configures the root logger itself, in each worker
    "loggers": {
        "gunicorn.error": {"handlers": ["json"], "propagate": False},
        "gunicorn.access": {"handlers": [], "propagate": False},
    },
}



def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to HTTP it cannot parse, in the service's JSON error shape, not HTML."""
    from gunicorn.util import write_nonblock

    body = json.dumps({"message": f"{reason}.", "detail": mesg}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    write_nonblock(sock, head.encode("latin-1") + body)


# Workers are forked from the master after this file ran, so they inherit it.
gunicorn.util.write_error = write_json_error


def raise_open_files_limit() -> None:
    """Every open watch socket is a file descriptor: the soft limit (often 1,024) goes up to the hard one,
    which the operator sets (systemd's LimitNOFILE, ulimit -Hn, a container's nofile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


raise_open_files_limit()  # in the master, before it forks the workers (and they their sandboxes)

_process_headers = gunicorn.http.wsgi.Response.process_headers


def process_headers_honouring_close(self: gunicorn.http.wsgi.Response, headers: list[tuple[str, str]]) -> None:
    """gunicorn drops an application's Connection header and says keep-alive; "close" ends the connection.

    web.bodies.BodyMiddleware sends it on an answer after which the connection
    ends anyway (a body that will not come, or cannot all be drained): the
    answer says so, and gunicorn closes it instead of waiting for a request.
    """
    _process_headers(self, headers)
    if any(name.lower() == "connection" and value.strip(" \t").lower() == "close" for name, value in headers):
        self.force_close()


gunicorn.http.wsgi.Response.process_headers = process_headers_honouring_close

METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
OWNED_METRICS_DIR = "CHATFILES_OWNED_METRICS_DIR"  # survives a config reload; a module global would not

# Before any worker imports prometheus_client: it picks its storage at import.
if not os.environ.get(METRICS_DIR):
    os.environ[METRICS_DIR] = os.environ[OWNED_METRICS_DIR] = tempfile.mkdtemp(prefix="chatfiles-metrics-")


def on_starting(server: Arbiter) -> None:
    path = os.environ[METRICS_DIR]
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):  # a previous run's workers
        os.remove(stale)


def post_fork(server: Arbiter, worker: Worker) -> None:
    from sandbox.worker import return_large_blocks_to_the_os

    return_large_blocks_to_the_os()


def pre_request(worker: Worker, req: Request) -> None:
    # gunicorn would send "100 Continue" before the app ran; web.bodies.BodyInput
    # sends it when the body is first read, so a request refused before that
    # (401, 403, 413) gets its answer without the client sending the body.
    req._expected_100_continue = False


def post_worker_init(worker: Worker) -> None:
    from ops import shutdown
    from sandbox import tasks

    shutdown.close_sockets_on_sigterm()
    config = getattr(worker.wsgi, "config", None)  # None: the app failed to load, gunicorn serves its error
    if config is not None:
        tasks.warm(config)  # the worker's decode and scan sandboxes (sandbox/), started now


def worker_int(worker: Worker) -> None:
    # SIGINT/SIGQUIT: the worker exits right after this, no graceful wait.
    from ops import shutdown

    shutdown.close_all_sockets()


def worker_exit(server: Arbiter, worker: Worker) -> None:
    # Whatever is still open at the very end (e.g. after a max_requests restart).
    from ops import shutdown

    shutdown.close_all_sockets()


def child_exit(server: Arbiter, worker: Worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # drops its share of the open-sockets gauge


def on_exit(server: Arbiter) -> None:
    owned = os.environ.get(OWNED_METRICS_DIR)
    if owned and owned == os.environ.get(METRICS_DIR):
        shutil.rmtree(owned, ignore_errors=True)
