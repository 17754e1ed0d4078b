"""The HTTP floor: a minimal WSGI app that moves bytes between a client and S3.

``POST /objects/<key>`` reads the body and puts it to the bucket; ``GET
/objects/<key>`` streams the object back. No auth, no database, no checks:
whatever the service costs beyond this is its own overhead. Run under the
same gunicorn settings as the service (``gunicorn -c gunicorn.conf.py
bench.passthrough:app``) with S3_BUCKET and S3_ENDPOINT_URL set. It uses the
service's boto3 client settings and chunk size, so the comparison is about
the service's work, not about different S3 tuning; but one client per
process, shared by all threads (botocore clients are thread-safe once
built), which is the simplest thing that works.
"""

import os
import threading

import boto3

from storage import CHUNK_SIZE
from storage.s3 import CLIENT_CONFIG

BUCKET = os.environ.get("S3_BUCKET", "")
ENDPOINT_URL = os.environ.get("S3_ENDPOINT_URL")
PREFIX = "/objects/"

_client_lock = threading.Lock()
_shared = {}


def _client():
    client = _shared.get("client")
    if client is None:
        with _client_lock:  # building a client is not thread-safe; using it is
            client = _shared.get("client")
            if client is None:
                client = _shared["client"] = boto3.session.Session().client(
                    "s3", endpoint_url=ENDPOINT_URL, config=CLIENT_CONFIG)
    return client


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    method = environ["REQUEST_METHOD"]
    if not path.startswith(PREFIX) or len(path) == len(PREFIX):
        return _plain(start_response, "404 Not Found", b"not found\n")
    key = path[len(PREFIX):]
    if method == "POST":
        return _put(environ, start_response, key)
    if method == "GET":
        return _get(start_response, key)
    return _plain(start_response, "405 Method Not Allowed", b"method not allowed\n")


def _put(environ, start_response, key):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    content_type = environ.get("CONTENT_TYPE") or "application/octet-stream"
    _client().put_object(Bucket=BUCKET, Key=key, Body=body, ContentType=content_type)
    return _plain(start_response, "201 Created", b'{"ok": true}', "application/json")


def _get(start_response, key):
    response = _client().get_object(Bucket=BUCKET, Key=key)
    body = response["Body"]
    start_response("200 OK", [
        ("Content-Type", response.get("ContentType", "application/octet-stream")),
        ("Content-Length", str(response["ContentLength"])),
    ])
    return _Streamed(body)


class _Streamed:
    """The object's chunks, closing the S3 response when gunicorn is done."""

    def __init__(self, body):
        self._body = body

    def __iter__(self):
        return self._body.iter_chunks(CHUNK_SIZE)

    def close(self):
        self._body.close()


def _plain(start_response, status, body, content_type="text/plain"):
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
