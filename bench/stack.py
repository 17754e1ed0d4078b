"""The servers a benchmark run needs, all on 127.0.0.1, started and stopped together.

moto S3 (one bucket shared by everyone), the service under gunicorn with the
Procfile's gunicorn.conf.py, the passthrough app under the same settings,
and on demand a single-worker service for the per-worker measurements.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.live import BIN, GunicornServer
from harness.servers import AWS_TEST_CREDENTIALS, MotoServer, PostgresServer

BUCKET = "bench"

AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": AWS_TEST_CREDENTIALS["aws_access_key_id"],
    "AWS_SECRET_ACCESS_KEY": AWS_TEST_CREDENTIALS["aws_secret_access_key"],
    "AWS_DEFAULT_REGION": AWS_TEST_CREDENTIALS["region_name"],
}


class PassthroughServer(GunicornServer):
    """bench/passthrough.py under ``gunicorn -c gunicorn.conf.py``; no database to set up."""

    NAME = "passthrough gunicorn"

    def _prepare(self):
        pass

    def _command(self, port):
        return [os.path.join(BIN, "gunicorn"), "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
                "bench.passthrough:app"]

    def _answers(self):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"{self.url}/", timeout=1).close()
        except urllib.error.HTTPError:
            return True  # the 404 for "/" means it is serving
        except OSError:
            return False
        return True


class BareServer(PassthroughServer):
    """bench/bare.py under ``gunicorn -c gunicorn.conf.py``: the bare request a 304 is compared with."""

    NAME = "bare gunicorn"
    APP = "bench.bare:app"

    def _command(self, port):
        return [os.path.join(BIN, "gunicorn"), "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", self.APP]

    def _answers(self):
        return _answers_with(self.port, "/")


class FlaskFloorServer(BareServer):
    """bench/bare_flask.py: the same 304 from a one-route Flask app, Flask's own floor."""

    NAME = "flask-floor gunicorn"
    APP = "bench.bare_flask:app"

    def _answers(self):
        return _answers_with(self.port, "/api/v2/chats/files/x")


class ContractFloorServer(BareServer):
    """bench/contract_304.py on the service's database: the least a correct 304 costs in Flask."""

    NAME = "contract-floor gunicorn"
    APP = "bench.contract_304:app"

    def _answers(self):
        return _answers_with(self.port, "/api/v2/chats/files/x", status=401)  # no token: the route ran


def _answers_with(port, path, status=304):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == status
    except OSError:
        return False
    finally:
        connection.close()


def moto_pid(moto):
    return moto._process.pid  # MotoServer keeps its Popen private; the benchmark only reads its CPU time


class Stack:
    """Everything started by one benchmark run; close() stops it all."""

    def __init__(self, work_dir, database="sqlite"):
        self.work_dir = Path(work_dir)
        self.database = database
        self._exit = contextlib.ExitStack()
        self.moto = None
        self.postgres = None
        self.service = None
        self.passthrough = None
        self.bare = None
        self.flask_floor = None
        self.contract_floor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        self._exit.close()

    def start(self):
        for name, value in AWS_ENVIRONMENT.items():
            os.environ.setdefault(name, value)  # our own boto3 clients, before any is built
        self.moto = self._started(MotoServer(self.work_dir / "moto"))
        self.moto.create_bucket(BUCKET)
        if self.database == "postgres":
            base_dir = tempfile.mkdtemp(prefix="bench-postgres-")
            os.chmod(base_dir, 0o755)  # the postgres user must reach it
            self._exit.callback(shutil.rmtree, base_dir, ignore_errors=True)  # runs after the server's close
            self.postgres = self._started(PostgresServer(base_dir))
        self.service = self.start_service("service")
        self.passthrough = self._started(PassthroughServer(self.s3_environment(), work_dir=self._dir("passthrough")))
        self.bare = self._started(BareServer({}, work_dir=self._dir("bare")))
        self.flask_floor = self._started(FlaskFloorServer({}, work_dir=self._dir("flask-floor")))
        self.contract_floor = self._started(ContractFloorServer({"DATABASE_URL": self.service.env["DATABASE_URL"]},
                                                               work_dir=self._dir("contract-floor")))
        return self

    def s3_environment(self):
        return {**AWS_ENVIRONMENT, "S3_BUCKET": BUCKET, "S3_ENDPOINT_URL": self.moto.endpoint_url}

    def start_service(self, name, **settings):
        """The service under the Procfile's gunicorn settings (``settings`` override env, e.g. WEB_CONCURRENCY)."""
        work_dir = self._dir(name)
        metrics_dir = work_dir / "metrics"  # read by bench/overhead.py: the workers' own image-work CPU
        env = {
            **self.s3_environment(),
            "DATABASE_URL": self._database_url(name, work_dir),
            "WORKSPACES_ROOT": str(work_dir / "workspaces"),
            "LOG_LEVEL": "INFO",  # production's: every request writes its log line (to gunicorn.log here)
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            **settings,
        }
        (work_dir / "workspaces").mkdir(exist_ok=True)
        metrics_dir.mkdir(exist_ok=True)  # the flask commands run before gunicorn also write metrics there
        server = self._started(GunicornServer(env, work_dir=str(work_dir)))
        server.metrics_dir = metrics_dir
        return server

    def stop(self, server):
        """Stop a server early (close() would stop it anyway)."""
        server.close()

    def database_label(self):
        return "PostgreSQL (pooled)" if self.database == "postgres" else "SQLite (WAL)"

    def _database_url(self, name, work_dir):
        if self.postgres is not None:
            return self.postgres.create_database(f"bench_{name}")
        return f"sqlite:///{work_dir}/chatfiles.db"

    def _dir(self, name):
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _started(self, server):
        try:
            server.start()
        except subprocess.CalledProcessError as error:  # init-db: show why, not just the exit code
            output = (error.stderr or b"").decode(errors="replace")[-2000:]
            raise RuntimeError(f"{server.NAME}: {' '.join(map(str, error.cmd))} failed:\n{output}") from None
        self._exit.callback(server.close)
        return server
