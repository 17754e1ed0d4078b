"""Any S3-compatible endpoint through boto3.

One client per process, created lazily and shared by all request threads
(boto3 clients are thread-safe once made; a client per thread cost ~17 MiB
and up to half a second each), with bounded timeouts and retries so an unreachable
endpoint yields a StorageError within seconds rather than a hung worker:
a stopped endpoint (connection refused) fails in well under a second, a hung
one (accepts, never answers) after ATTEMPTS x READ_TIMEOUT, about 9 s.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
from typing import Any, BinaryIO, Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storage.interface import CHUNK_SIZE, ByteRange, ObjectInfo, ObjectStore, StorageError, StoredObject

# read_timeout bounds each wait for a response or for the next chunk of a
# body, not a whole transfer, so large objects stream fine. Non-throttling
# retries back off by at most tens of milliseconds, so attempts x timeouts is
# the worst case.
ATTEMPTS = 3  # the first try included
READ_TIMEOUT = 3
CLIENT_CONFIG = Config(
    connect_timeout=2,
    read_timeout=READ_TIMEOUT,
    retries={"total_max_attempts": ATTEMPTS, "mode": "standard"},
    max_pool_connections=64,
    # Checksums only when the API requires one: other S3-compatible servers
    # reject the newer default trailers, and sha256 is in the metadata anyway.
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
)

# Readiness probes want a quick answer, not retries: one short try.
CHECK_CONFIG = CLIENT_CONFIG.merge(Config(read_timeout=2, retries={"total_max_attempts": 1, "mode": "standard"}))

class S3Store(ObjectStore):
    def __init__(self, bucket: str, endpoint_url: str | None = None, region: str = "us-east-1", **layout: str) -> None:
        super().__init__(**layout)
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self._clients: dict[str, Any] = {}  # boto3 clients: boto3 is untyped here (mypy.ini)
        self._clients_lock = threading.Lock()  # making a client is not thread-safe

    @property
    def client(self) -> Any:  # a boto3 S3 client
        return self._shared_client("requests", CLIENT_CONFIG)

    @property
    def check_client(self) -> Any:
        return self._shared_client("readiness", CHECK_CONFIG)

    def _shared_client(self, name: str, config: Config) -> Any:
        client = self._clients.get(name)
        if client is None:
            with self._clients_lock:
                client = self._clients.get(name)
                if client is None:
                    client = boto3.session.Session().client(
                        "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
                    )
                    self._clients[name] = client
        return client

    def put(self, key: str, data: bytes | BinaryIO, content_type: str, metadata: dict[str, str]) -> None:
        with _translated_errors(key):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, Metadata=metadata)

    def head(self, key: str) -> ObjectInfo:
        with _translated_errors(key):
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        return _object_info(key, response)

    def open(self, key: str, byte_range: ByteRange | None = None) -> StoredObject:
        request = {"Bucket": self.bucket, "Key": key}
        if byte_range is not None:  # a ranged GetObject: S3 sends only these bytes
            request["Range"] = f"bytes={byte_range.first}-{byte_range.last}"
        with _translated_errors(key):
            response = self.client.get_object(**request)
        body = response["Body"]
        return StoredObject(_object_info(key, response), _chunks(key, body), body.close)

    def delete(self, key: str) -> None:
        with _translated_errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def iter_objects(self, prefix: str = "") -> Iterator[tuple[str, datetime.datetime]]:
        paginator = self.client.get_paginator("list_objects_v2")
        with _translated_errors(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"], item["LastModified"]

    def check(self) -> None:
        try:
            with _translated_errors(self.bucket):
                self.check_client.head_bucket(Bucket=self.bucket)
        except FileNotFoundError:
            raise StorageError(f"Bucket {self.bucket} does not exist.") from None


def _object_info(key: str, response: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=_object_size(response),
        content_type=response.get("ContentType", ""),
        last_modified=response["LastModified"],
        metadata=response.get("Metadata", {}),
    )


def _object_size(response: dict[str, Any]) -> int:
    """The whole object's size: a ranged GetObject's ContentLength is the range's, its total is in ContentRange
    (``bytes 0-9/1234``)."""
    content_range = response.get("ContentRange")
    if content_range:
        return int(content_range.rpartition("/")[2])
    return int(response["ContentLength"])


def _chunks(key: str, body: Any) -> Iterator[bytes]:  # body: botocore's StreamingBody, untyped here
    with _translated_errors(key):
        yield from body.iter_chunks(CHUNK_SIZE)


@contextlib.contextmanager
def _translated_errors(key: str) -> Iterator[None]:
    """Turn botocore's errors into FileNotFoundError or StorageError."""
    try:
        yield
    except ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.response.get("Error", {}).get("Code")
        if status == 404 or code in ("NoSuchKey", "NotFound"):
            raise FileNotFoundError(key) from None
        raise StorageError(f"S3 error on {key}: {code or status}") from error
    except BotoCoreError as error:
        raise StorageError(f"S3 unreachable for {key}: {error}") from error
