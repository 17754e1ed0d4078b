"""pytest plugin: real PostgreSQL and S3 (moto over HTTP) servers.

Load with `pytest_plugins = ["tests.fixtures_servers"]` in the top conftest.

Session fixtures: postgres_server (PostgresServer), s3_server (MotoServer).
Per-test fixtures: postgres_url (fresh database), s3_bucket ((endpoint_url, bucket)).
serving(server): the start, yield, close body of such a fixture, for other modules' too.

Missing PostgreSQL binaries skip the PostgreSQL tests loudly, except under
CI=true, where they fail: CI must never go green without having run them.
"""

import os
import shutil
import tempfile
import uuid

import pytest

from harness.servers import MotoServer, PostgresServer

AWS_TEST_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

_postgres_skip_reasons = []


def pytest_configure(config):
    # Before any test builds a boto3 client, so no real AWS credentials are looked up.
    for name, value in AWS_TEST_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def pytest_terminal_summary(terminalreporter):
    # A skip line is easy to miss; a red banner at the end is not.
    if not _postgres_skip_reasons:
        return
    terminalreporter.section("PostgreSQL tests were SKIPPED", sep="!", red=True, bold=True)
    terminalreporter.write_line(_postgres_skip_reasons[0], red=True, bold=True)
    terminalreporter.write_line("Run ./scripts/test (installs PostgreSQL when root) to run them.", red=True)


def _unique_name(prefix):
    return f"{prefix}{uuid.uuid4().hex[:16]}"


def _postgres_unavailable(reason):
    message = f"PostgreSQL unavailable: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: PostgreSQL tests must run in CI)", pytrace=False)
    _postgres_skip_reasons.append(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_server():
    available, reason = PostgresServer.available()
    if not available:
        _postgres_unavailable(reason)
    # Not tmp_path_factory: pytest's temp root is 0700 root-owned, out of reach of the postgres user.
    base_dir = tempfile.mkdtemp(prefix="tests-postgres-")
    os.chmod(base_dir, 0o755)
    server = PostgresServer(base_dir)
    try:
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(base_dir, ignore_errors=True)


def serving(server):
    """A fixture's body: yield `server` started, then close it, also after a failed start (its scratch files go too)."""
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def s3_server():
    yield from serving(MotoServer())


@pytest.fixture
def postgres_url(postgres_server):
    """URL of a new, empty database, dropped after the test."""
    name = _unique_name("test_")
    url = postgres_server.create_database(name)
    yield url
    if not postgres_server.is_running():
        postgres_server.start()  # a test stopped the shared server: bring it back for the next ones
    try:
        postgres_server.drop_database(name)
    except Exception:
        pass  # a leftover database in a throw-away cluster harms nobody


@pytest.fixture
def s3_bucket(s3_server):
    """(endpoint_url, bucket_name) of a new, empty bucket, deleted after the test."""
    name = _unique_name("test-")
    s3_server.create_bucket(name)
    yield s3_server.endpoint_url, name
    s3_server.resume()  # a test that froze S3 must not hang the ones after it
    if not s3_server.is_running():
        s3_server.start()
    try:
        s3_server.delete_bucket(name)
    except Exception:
        pass  # gone already, e.g. after a restart
