"""The test servers themselves: fixtures answer, restarts behave as documented."""

import boto3
import psycopg2
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError

from harness.servers import MotoServer, PostgresServer


def _fetch_one(url, query):
    connection = psycopg2.connect(url, connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute(query)
            return cursor.fetchone()[0]
    finally:
        connection.close()


def _s3_client(endpoint_url, **config):
    return boto3.client("s3", endpoint_url=endpoint_url, config=Config(**config))


def test_postgres_url_accepts_queries(postgres_url):
    assert _fetch_one(postgres_url, "select 1") == 1


def test_postgres_url_is_a_fresh_database_each_test(postgres_url, postgres_server):
    assert postgres_url.startswith(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/test_")
    assert _fetch_one(postgres_url, "select count(*) from pg_tables where schemaname = 'public'") == 0


def test_postgres_restart_keeps_data_and_port(postgres_server, tmp_path):
    # A private server: restarting the shared one would cut other fixtures' connections.
    # tmp_path is root-only, so this also covers the fallback to a directory postgres can reach.
    with PostgresServer(tmp_path) as server:
        url = server.create_database("kept")
        connection = psycopg2.connect(url)
        with connection, connection.cursor() as cursor:
            cursor.execute("create table note (body text); insert into note values ('survives')")
        connection.close()
        port = server.port

        server.restart()

        assert server.is_running() and server.port == port
        assert _fetch_one(url, "select body from note") == "survives"
        server.stop()
        assert not server.is_running()
        server.start()
        assert server.port == port
        assert _fetch_one(url, "select count(*) from note") == 1


def test_s3_bucket_put_and_get_over_http(s3_bucket):
    endpoint_url, bucket = s3_bucket
    assert endpoint_url.startswith("http://127.0.0.1:")
    client = _s3_client(endpoint_url)  # credentials and region come from the plugin's env defaults
    client.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello, world")
    assert client.get_object(Bucket=bucket, Key="hello.txt")["Body"].read() == b"hello, world"


def test_moto_restart_answers_on_same_port_with_empty_state():
    # A private server: restarting the shared one would wipe other tests' buckets.
    with MotoServer() as server:
        server.create_bucket("before-restart")
        port = server.port

        server.restart()

        assert server.is_running() and server.port == port
        assert server.s3_client().list_buckets()["Buckets"] == []
        with pytest.raises(ClientError):
            server.s3_client().head_bucket(Bucket="before-restart")
        server.create_bucket("after-restart")
        assert [b["Name"] for b in server.s3_client().list_buckets()["Buckets"]] == ["after-restart"]


def test_moto_pause_makes_requests_hang_until_resume():
    with MotoServer() as server:
        server.pause()
        impatient = server.s3_client(read_timeout=0.3, retries={"max_attempts": 0})
        with pytest.raises(ReadTimeoutError):
            impatient.list_buckets()
        server.resume()
        # Patient client: moto loads its S3 backend lazily on the first answered request.
        assert server.s3_client().list_buckets()["Buckets"] == []
