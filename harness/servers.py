"""Throw-away PostgreSQL and S3 (moto) servers for tests and benchmarks.

Plain Python on purpose (no pytest import): load and benchmark scripts use
these classes directly, the pytest fixtures in tests/fixtures_servers.py
only wrap them.

Every process started here is registered for termination at interpreter
exit, and (when started from the main thread on Linux) is also told by the
kernel to die with us, so no server outlives a crashed or killed session.
Directories the servers create for themselves (data, logs) are deleted by
close() or, failing that, at exit.
"""

import atexit
import ctypes
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

LOCALHOST = "127.0.0.1"
PORT_ATTEMPTS = 3  # another process may grab a port between free_port() and bind

AWS_TEST_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "region_name": "us-east-1",
}


class ServerStartError(RuntimeError):
    """A server did not come up; the message carries its log tail."""


def free_port():
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


# --- process bookkeeping ----------------------------------------------------

_live_processes = {}  # pid -> (Popen, polite stop signal)
_scratch_dirs = set()  # created by us, deleted at exit unless close() did it
_live_lock = threading.Lock()


def _register(process, stop_signal):
    with _live_lock:
        _live_processes[process.pid] = (process, stop_signal)


def _unregister(process):
    with _live_lock:
        _live_processes.pop(process.pid, None)


def _terminate(process, stop_signal, grace_seconds):
    """Ask politely, then kill. SIGCONT first: a paused process ignores the rest."""
    if process.poll() is not None:
        return
    try:
        process.send_signal(signal.SIGCONT)
        process.send_signal(stop_signal)
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    except ProcessLookupError:
        pass


def _make_scratch_dir(prefix, parent=None):
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    with _live_lock:
        _scratch_dirs.add(path)
    return path


def _remove_scratch_dir(path):
    shutil.rmtree(path, ignore_errors=True)
    with _live_lock:
        _scratch_dirs.discard(path)


@atexit.register
def _clean_up_leftovers():
    with _live_lock:
        leftovers = list(_live_processes.values())
        _live_processes.clear()
        directories = list(_scratch_dirs)
    for process, stop_signal in leftovers:
        _terminate(process, stop_signal, grace_seconds=5)
    for directory in directories:  # only now: the servers wrote into them
        _remove_scratch_dir(directory)


def _die_with_parent(death_signal):
    """preexec_fn making the kernel signal the child when we die (Linux only).

    The kernel ties this to the *thread* that forked, so it is only armed
    from the main thread: a server started from a short-lived worker thread
    would otherwise die when that thread ends.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    pr_set_pdeathsig = 1

    def arm():
        prctl(pr_set_pdeathsig, int(death_signal), 0, 0, 0)

    return arm


def _log_tail(path, lines=30):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --- common lifecycle --------------------------------------------------------


class _ServerProcess:
    """Start/stop/restart bookkeeping shared by the servers below.

    Subclasses provide _command(port), _popen_options(), _answers() and
    log_path; the first start() picks a free port, later ones reuse it.
    """

    NAME = "server"
    STOP_SIGNAL = signal.SIGTERM
    DEATH_SIGNAL = signal.SIGKILL  # sent by the kernel if we die without cleaning up
    STARTUP_TIMEOUT = 30
    SHUTDOWN_TIMEOUT = 10

    def __init__(self):
        self._port = None
        self._process = None
        self._log_file = None

    @property
    def port(self):
        return self._port

    def start(self):
        if self.is_running():
            return self
        self._prepare()
        if self._port is not None:
            self._launch(self._port)  # restart: keeping the port is part of the contract
            return self
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._launch(free_port())
                return self
            except ServerStartError as error:
                self._port = None
                if "already in use" not in str(error) or attempt == PORT_ATTEMPTS:
                    raise
        return self

    def stop(self):
        if self._process is not None:
            _terminate(self._process, self.STOP_SIGNAL, self.SHUTDOWN_TIMEOUT)
            _unregister(self._process)
            self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self):
        """Stop then start again on the same port."""
        self.stop()
        return self.start()

    def is_running(self):
        return self._process is not None and self._process.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        self.stop()

    # -- hooks --

    def _prepare(self):
        """One-time setup before the first launch."""

    def _popen_options(self):
        return {}

    # -- internals --

    def _launch(self, port):
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n--- {time.strftime('%H:%M:%S')} starting on port {port}\n".encode())
        self._log_file.flush()
        self._process = subprocess.Popen(
            self._command(port),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal Ctrl-C goes to pytest, which then stops us cleanly
            preexec_fn=_die_with_parent(self.DEATH_SIGNAL),
            **self._popen_options(),
        )
        _register(self._process, self.STOP_SIGNAL)
        self._port = port
        try:
            self._wait_until_answering()
        except ServerStartError:
            self.stop()
            raise

    def _wait_until_answering(self):
        deadline = time.monotonic() + self.STARTUP_TIMEOUT
        while not self._answers():
            if self._process.poll() is not None:
                self._fail(f"exited with code {self._process.returncode} during startup")
            if time.monotonic() > deadline:
                self._fail(f"did not answer within {self.STARTUP_TIMEOUT}s")
            time.sleep(0.05)

    def _fail(self, what):
        raise ServerStartError(
            f"{self.NAME} on port {self._port} {what}; log tail ({self.log_path}):\n{_log_tail(self.log_path)}"
        )


# --- PostgreSQL --------------------------------------------------------------


def find_postgres_bindir():
    """Directory holding initdb and postgres, or None.

    pg_config alone is not proof: libpq-dev ships it without the server.
    """
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if result.returncode == 0:
            candidates.append(result.stdout.strip())
    # Debian keeps server binaries off PATH; newest version first.
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    initdb_on_path = shutil.which("initdb")
    if initdb_on_path:
        candidates.append(str(Path(initdb_on_path).resolve().parent))
    for directory in candidates:
        if all(os.access(Path(directory, tool), os.X_OK) for tool in ("initdb", "postgres")):
            return Path(directory)
    return None


def _version_key(bindir):
    version = Path(bindir).parent.name
    return int(version) if version.isdigit() else 0


def _postgres_system_user():
    """pwd entry to run PostgreSQL as, or None to run as ourselves.

    PostgreSQL refuses to run as root, so root drops to the `postgres` user.
    """
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ServerStartError(
            "running as root but there is no 'postgres' system user to run PostgreSQL as "
            "(installing the postgresql package creates it)"
        ) from None


def _can_traverse(path, user):
    """Whether `user` may enter every directory down to `path` (root's os.access says yes to all)."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    current = Path(path).resolve()
    for directory in [current, *current.parents]:
        info = directory.stat()
        if info.st_uid == user.pw_uid:
            needed = stat.S_IXUSR
        elif info.st_gid in groups:
            needed = stat.S_IXGRP
        else:
            needed = stat.S_IXOTH
        if not info.st_mode & needed:
            return False
    return True


class PostgresServer(_ServerProcess):
    """A private PostgreSQL cluster on 127.0.0.1, tuned for speed, not durability.

    The cluster lives in a fresh directory inside `base_dir`, or inside the
    system temp dir when the `postgres` user cannot reach `base_dir` (e.g.
    pytest's 0700 temp root). stop()/start() and restart() keep the data and
    the port; close() stops the server and deletes the cluster.
    """

    NAME = "postgres"
    STOP_SIGNAL = signal.SIGINT  # "fast shutdown": aborts sessions, no waiting for clients
    DEATH_SIGNAL = signal.SIGQUIT  # "immediate shutdown": also takes the backends down
    SHUTDOWN_TIMEOUT = 30
    SUPERUSER = "postgres"
    SETTINGS = {
        "listen_addresses": LOCALHOST,
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
    }

    def __init__(self, base_dir):
        super().__init__()
        self.base_dir = Path(base_dir)
        self._work_dir = None
        self._bindir = None
        self._run_as = None

    @classmethod
    def available(cls):
        """(True, "") when a server can be started here, else (False, why not)."""
        if find_postgres_bindir() is None:
            return False, (
                "PostgreSQL server binaries (initdb, postgres) not found via pg_config --bindir, "
                "/usr/lib/postgresql/*/bin or PATH"
            )
        try:
            _postgres_system_user()
        except ServerStartError as error:
            return False, str(error)
        return True, ""

    # -- addresses --

    @property
    def url(self):
        return self.database_url("postgres")

    def database_url(self, name):
        if self._port is None:
            raise RuntimeError("PostgresServer has not been started")
        return f"postgresql://{self.SUPERUSER}@{LOCALHOST}:{self._port}/{name}"

    @property
    def log_path(self):
        return None if self._work_dir is None else self._work_dir / "postgres.log"

    # -- lifecycle --

    def stop(self):
        """Fast shutdown: open sessions are aborted, data is kept."""
        super().stop()

    def close(self):
        """Stop and delete the cluster; a later start() builds a new one on a new port."""
        self.stop()
        if self._work_dir is not None:
            _remove_scratch_dir(self._work_dir)
        self._work_dir = None
        self._port = None

    # -- databases --

    def connect(self, dbname="postgres", **kwargs):
        import psycopg2  # app dependency; imported late so this module loads without it

        return psycopg2.connect(self.database_url(dbname), **kwargs)

    def create_database(self, name):
        """Create an empty database and return its URL."""
        self._run_admin_statement("CREATE DATABASE {}", name)
        return self.database_url(name)

    def drop_database(self, name):
        """Drop a database, disconnecting its sessions first."""
        self._run_admin_statement("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)  # FORCE: PG 13+

    def _run_admin_statement(self, template, database_name):
        from psycopg2 import sql

        connection = self.connect(connect_timeout=5)
        try:
            connection.autocommit = True  # CREATE/DROP DATABASE refuse to run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL(template).format(sql.Identifier(database_name)))
        finally:
            connection.close()

    # -- internals --

    def _prepare(self):
        if self._work_dir is None:
            self._init_cluster()

    def _init_cluster(self):
        self._bindir = find_postgres_bindir()
        if self._bindir is None:
            raise ServerStartError(self.available()[1])
        self._run_as = _postgres_system_user()
        self._work_dir = self._make_work_dir()
        command = [
            str(self._bindir / "initdb"),
            "--pgdata", str(self._work_dir / "data"),
            "--username", self.SUPERUSER,
            "--auth", "trust",
            "--encoding", "UTF8",
            "--locale", "C",
            "--no-sync",  # nothing here needs to survive a power cut
        ]
        result = subprocess.run(command, capture_output=True, text=True, **self._popen_options())
        if result.returncode != 0:
            raise ServerStartError(f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def _make_work_dir(self):
        parent = self.base_dir
        parent.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None and not _can_traverse(parent, self._run_as):
            parent = Path(tempfile.gettempdir())
        work_dir = _make_scratch_dir("postgres-", parent)
        (work_dir / "socket").mkdir()
        if self._run_as is not None:
            for path in (work_dir, work_dir / "socket"):
                os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        return work_dir

    def _socket_dir_setting(self):
        socket_dir = str(self._work_dir / "socket")
        # Unix socket paths are capped at 107 bytes; an empty setting means TCP only, which we use anyway.
        return socket_dir if len(socket_dir) + len("/.s.PGSQL.65535") < 100 else ""

    def _command(self, port):
        command = [
            str(self._bindir / "postgres"),
            "-D", str(self._work_dir / "data"),
            "-p", str(port),
            "-k", self._socket_dir_setting(),
        ]
        for name, value in self.SETTINGS.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _popen_options(self):
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        options = {"cwd": str(self._work_dir), "env": env}
        if self._run_as is not None:
            env["HOME"] = str(self._work_dir)
            options.update(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
        return options

    def _answers(self):
        import psycopg2

        try:
            psycopg2.connect(self.url, connect_timeout=1).close()
            return True
        except psycopg2.OperationalError:
            return False


# --- S3 (moto) ---------------------------------------------------------------


class MotoServer(_ServerProcess):
    """moto's standalone S3 server, over real HTTP on 127.0.0.1.

    moto keeps everything in memory: after stop()/restart() the server answers
    on the same port but all buckets and objects are gone; recreate them with
    create_bucket(). pause()/resume() freeze the process (SIGSTOP/SIGCONT) to
    simulate a hung S3: the kernel still accepts connections, nobody answers.
    """

    NAME = "moto S3 server"

    def __init__(self, base_dir=None):
        super().__init__()
        self._owns_base_dir = base_dir is None
        self.base_dir = _make_scratch_dir("moto-") if base_dir is None else Path(base_dir)
        self._paused = False

    @property
    def endpoint_url(self):
        if self._port is None:
            raise RuntimeError("MotoServer has not been started")
        return f"http://{LOCALHOST}:{self._port}"

    @property
    def log_path(self):
        return self.base_dir / "moto.log"

    # -- lifecycle --

    def stop(self):
        """Stop the server; its in-memory buckets are lost."""
        super().stop()
        self._paused = False

    def restart(self):
        """Stop then start on the same port. Buckets do NOT survive: moto is in-memory."""
        return super().restart()

    def close(self):
        self.stop()
        if self._owns_base_dir:
            _remove_scratch_dir(self.base_dir)

    def is_running(self):
        """True while the process exists, paused or not."""
        return super().is_running()

    @property
    def is_paused(self):
        return self._paused

    def pause(self):
        """Freeze the server (SIGSTOP): requests hang until resume()."""
        if self.is_running() and not self._paused:
            self._process.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self):
        if self.is_running() and self._paused:
            self._process.send_signal(signal.SIGCONT)
        self._paused = False

    # -- S3 helpers --

    def s3_client(self, **config_options):
        """boto3 S3 client for this server: dummy credentials, path-style, short timeouts."""
        import boto3
        from botocore.config import Config

        defaults = {
            "s3": {"addressing_style": "path"},
            "connect_timeout": 5,
            "read_timeout": 30,
            "retries": {"max_attempts": 2},
        }
        config = Config(**{**defaults, **config_options})
        return boto3.client("s3", endpoint_url=self.endpoint_url, config=config, **AWS_TEST_CREDENTIALS)

    def create_bucket(self, name):
        self.s3_client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name):
        """Empty and delete a bucket."""
        client = self.s3_client()
        for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
            for version in page.get("Versions", []) + page.get("DeleteMarkers", []):
                client.delete_object(Bucket=name, Key=version["Key"], VersionId=version["VersionId"])
        client.delete_bucket(Bucket=name)

    def reset(self):
        """Drop all buckets without restarting the process."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    # -- internals --

    def _prepare(self):
        self.base_dir.mkdir(parents=True, exist_ok=True)

    def _command(self, port):
        return [sys.executable, "-m", "moto.server", "-H", LOCALHOST, "-p", str(port)]

    def _answers(self):
        try:
            urllib.request.urlopen(f"http://{LOCALHOST}:{self._port}/moto-api/", timeout=1).close()
            return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            return False


# --- nginx -------------------------------------------------------------------

NGINX_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"


def find_nginx():
    """Path of the nginx binary (Debian keeps it in /usr/sbin, often off a user's PATH), or None."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def render_nginx_conf(text, *, port, upstreams, work_dir, extra_http=""):
    """The shipped deploy/nginx.conf for loopback: only addresses, ports and paths change.

    `upstreams` are "host:port" of the instances; logs, pid and temporary
    files go under `work_dir`; the frontend include points at
    `work_dir/frontend.d`. `extra_http` (more server blocks) is appended
    inside the http block, as a site adds its own.
    """
    work_dir = Path(work_dir)

    def replace(pattern, replacement, count=1):
        nonlocal text
        text, done = re.subn(pattern, lambda _: replacement, text, flags=re.MULTILINE)
        if done != count:
            raise ValueError(f"deploy/nginx.conf: expected {count} match(es) of {pattern!r}, found {done}")

    replace(r"^pid .*;$", f"pid {work_dir}/nginx.pid;")
    replace(r"^error_log \S+", f"error_log {work_dir}/error.log")
    replace(r"^(\s*)access_log \S+;", f"    access_log {work_dir}/access.log;")
    temp_paths = "".join(
        f"    {kind}_temp_path {work_dir}/temp-{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    replace(r"^\s*client_body_temp_path .*;\n\s*proxy_temp_path .*;\n", temp_paths)
    servers = "".join(f"        server {address} max_fails=1 fail_timeout=10s;\n" for address in upstreams)
    replace(r"^(\s*server \d+\.\d+\.\d+\.\d+:\d+ .*;\n)+", servers)
    replace(r"^(\s*)listen 80;$", f"        listen {LOCALHOST}:{port};")
    replace(r"include /etc/nginx/chatfiles-frontend\.d/", f"include {work_dir}/frontend.d/")
    closing = text.rstrip().rfind("}")
    return text[:closing] + extra_http + text[closing:]


def _read_log(path):
    return path.read_text(errors="replace") if path.exists() else ""


class NginxServer(_ServerProcess):
    """nginx running deploy/nginx.conf on 127.0.0.1 in front of `upstreams` ("host:port" each).

    `frontend_conf` goes in the frontend include (locations of this server);
    `extra_http` is added to the http block (e.g. another server block).
    Files in `static_files` ({relative path: bytes}) are written under
    `static_root`, the work dir's static/ (readable by nginx's worker user),
    which they can serve with `root static;` (relative to nginx's prefix).
    """

    NAME = "nginx"
    STOP_SIGNAL = signal.SIGQUIT  # graceful: finish open requests, then exit

    def __init__(self, upstreams, frontend_conf="", extra_http="", static_files=None):
        super().__init__()
        self.upstreams = list(upstreams)
        self.frontend_conf = frontend_conf
        self.extra_http = extra_http
        self.static_files = static_files or {}
        self.work_dir = _make_scratch_dir("nginx-")
        # Workers run as an unprivileged user when we are root; let them in.
        os.chmod(self.work_dir, 0o755)

    @classmethod
    def available(cls):
        return find_nginx() is not None

    @property
    def url(self):
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def log_path(self):
        return self.work_dir / "nginx.out"

    @property
    def error_log_path(self):
        return self.work_dir / "error.log"

    @property
    def access_log_path(self):
        return self.work_dir / "access.log"

    @property
    def static_root(self):
        return self.work_dir / "static"

    def error_log(self):
        return _read_log(self.error_log_path)

    def access_log(self):
        return _read_log(self.access_log_path)

    def close(self):
        self.stop()
        _remove_scratch_dir(self.work_dir)

    def _prepare(self):
        (self.work_dir / "frontend.d").mkdir(exist_ok=True)
        (self.work_dir / "frontend.d" / "test.conf").write_text(self.frontend_conf)
        for name, content in self.static_files.items():
            path = self.static_root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        if self.static_root.exists():
            for path in [self.static_root, *self.static_root.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)

    def _command(self, port):
        config_path = self.work_dir / "nginx.conf"
        config_path.write_text(render_nginx_conf(
            NGINX_CONF.read_text(), port=port, upstreams=self.upstreams, work_dir=self.work_dir,
            extra_http=self.extra_http,
        ))
        return [find_nginx(), "-p", str(self.work_dir), "-e", str(self.work_dir / "startup-error.log"),
                "-c", str(config_path), "-g", "daemon off;"]

    def _answers(self):
        try:
            urllib.request.urlopen(f"{self.url}/healthz", timeout=1).close()
            return True
        except urllib.error.HTTPError:
            return True  # nginx answered (the upstreams may be what is down)
        except OSError:
            return False

    def _fail(self, what):
        # nginx reports a bad config on stderr (our log) and in its error log.
        raise ServerStartError(
            f"nginx on port {self._port} {what}:\n{_log_tail(self.log_path)}\n{_log_tail(self.error_log_path)}"
        )


def raw_exchange(port, request, timeout=30):
    """(status, lower-cased headers, body) of a server's answer to ``request``, bytes no well-behaved
    client sends, read until the server closes (it does, after such a request)."""
    with socket.create_connection((LOCALHOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body

