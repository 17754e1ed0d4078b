"""pytest plugin: the service as deployed, two gunicorn instances behind the shipped nginx config.

Fixtures: ``instances`` (two GunicornServer sharing one PostgreSQL database,
one S3 bucket and one workspaces directory, PROXY_HOPS=1), ``start_nginx``
(a function starting deploy/nginx.conf in front of them; every nginx it
started is closed after the test) and ``nginx`` (one started with the
defaults), ``account`` (a user made through instance A).

nginx missing skips these tests, except under CI=true, where it fails.
"""

import os
import subprocess

import pytest

from harness.live import GunicornServer
from harness.servers import LOCALHOST, NginxServer, _make_scratch_dir, _remove_scratch_dir


def require(available, what):
    """Skip when a system tool is missing, but fail under CI=true: CI must run these tests."""
    if available:
        return
    message = f"{what} not installed (./scripts/test installs it when run as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def instances(postgres_url, s3_bucket):
    endpoint_url, bucket = s3_bucket
    workspaces = _make_scratch_dir("edge-workspaces-")
    settings = {
        "DATABASE_URL": postgres_url, "S3_BUCKET": bucket, "S3_ENDPOINT_URL": endpoint_url,
        "WORKSPACES_ROOT": str(workspaces), "PROXY_HOPS": 1, "WEB_CONCURRENCY": 2, "WEB_THREADS": 8,
    }
    work_dirs = [_make_scratch_dir(f"edge-{name}-") for name in "AB"]
    servers = [GunicornServer(settings, work_dir=str(work_dir)) for work_dir in work_dirs]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
        for directory in [workspaces, *work_dirs]:
            _remove_scratch_dir(directory)


@pytest.fixture
def start_nginx(instances):
    require(NginxServer.available(), "nginx")
    started = []

    def start(**options):
        server = NginxServer([f"{LOCALHOST}:{instance.port}" for instance in instances], **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()


@pytest.fixture
def nginx(start_nginx):
    return start_nginx()


@pytest.fixture
def account(instances):
    """{"user_id", "organization_id", "token", ...} of a user made through instance A."""
    return instances[0].flask("create-user", "alice", "--org", "acme")


def make_workspace(account, instances, name):
    """A git repository as the account's chat workspace `name` (in its own directory when it has one)."""
    root = account.get("workspaces_dir") or instances[0].env["WORKSPACES_ROOT"]
    path = os.path.join(root, name)
    os.makedirs(path)
    subprocess.run(["git", "init", "-q", path], check=True)
    return path
