"""The service itself under gunicorn with the Procfile's settings, for end-to-end tests,
load tests and benchmarks. Plain Python, like harness/servers.py.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request

import requests

from harness.servers import LOCALHOST, _ServerProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def sqlite_settings(root, **settings):
    """Service settings on a SQLite file and a local store under `root`: a live server needing no other server."""
    return {
        "DATABASE_URL": f"sqlite:///{root}/db.sqlite",
        "LOCAL_STORAGE_ROOT": str(root / "objects"),
        "WORKSPACES_ROOT": str(root / "workspaces"),
        **settings,
    }


def backend_settings(request, tmp_path):
    """Service settings for a fixture param: "sqlite-local", or "postgres-s3" on the session's servers."""
    if request.param == "sqlite-local":
        return sqlite_settings(tmp_path)
    endpoint_url, bucket = request.getfixturevalue("s3_bucket")
    return {"DATABASE_URL": request.getfixturevalue("postgres_url"), "S3_BUCKET": bucket,
            "S3_ENDPOINT_URL": endpoint_url, "WORKSPACES_ROOT": str(tmp_path / "workspaces")}


class GunicornServer(_ServerProcess):
    """``gunicorn -c gunicorn.conf.py wsgi:app`` bound to loopback, with ``env`` on top of ours.

    ``env`` carries the service's settings (DATABASE_URL, S3_BUCKET, ...);
    WEB_CONCURRENCY and WEB_THREADS size it like the Procfile does.
    """

    NAME = "gunicorn"
    STOP_SIGNAL = signal.SIGTERM
    SHUTDOWN_TIMEOUT = 30

    def __init__(self, env, work_dir=None, extra_args=()):
        super().__init__()
        self.work_dir = work_dir or tempfile.mkdtemp(prefix="chatfiles-live-")
        self.env = {**os.environ, **{key: str(value) for key, value in env.items() if value is not None}}
        self.extra_args = list(extra_args)

    @property
    def url(self):
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def log_path(self):
        return os.path.join(self.work_dir, "gunicorn.log")

    @property
    def pid(self):
        return self._process.pid if self._process else None

    def worker_pids(self):
        """The pids of the master's current workers."""
        children = f"/proc/{self.pid}/task/{self.pid}/children"
        with open(children) as handle:
            return [int(pid) for pid in handle.read().split()]

    def flask(self, *args):
        """Run an admin command against the same settings; return its JSON output."""
        output = subprocess.run(
            [os.path.join(BIN, "flask"), "--app", "wsgi", *args, "--json"],
            cwd=ROOT, env=self.env, check=True, capture_output=True, text=True,
        ).stdout
        return json.loads(output)

    def _prepare(self):
        subprocess.run([os.path.join(BIN, "flask"), "--app", "wsgi", "init-db"], cwd=ROOT, env=self.env,
                       check=True, capture_output=True)

    def _command(self, port):
        return [os.path.join(BIN, "gunicorn"), "-c", "gunicorn.conf.py", "--bind", f"{LOCALHOST}:{port}",
                *self.extra_args, "wsgi:app"]

    def _popen_options(self):
        return {"cwd": ROOT, "env": self.env}

    def _answers(self):
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False


def kill_instance(server):
    """SIGKILL a GunicornServer's master and its workers at once, as a crashed host would."""
    os.killpg(server.pid, signal.SIGKILL)  # start_new_session: the master leads the workers' group
    server._process.wait()
    server.stop()


def log_lines(server):
    """The service's JSON log lines (one per request, and its other records) written so far."""
    lines = []
    with open(server.log_path, errors="replace") as handle:
        for line in handle:
            if line.startswith("{") and line.endswith("\n"):  # not one still being written
                lines.append(json.loads(line))
    return lines


def archive_and_wait_for_close(base_url, chat, headers, sockets):
    """Archive `chat` through `base_url`; each of its watch sockets, whoever holds it, must then close for that."""
    response = requests.post(f"{base_url}/api/v2/chats/{chat['id']}/archive", headers=headers, timeout=10)
    assert response.status_code == 204, response.text  # messages: pytest does not rewrite asserts here
    for ws in sockets:
        closed = ws.wait_until_closed()
        assert closed.reason == "Chat was archived.", (closed.code, closed.reason)
