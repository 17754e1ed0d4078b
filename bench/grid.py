"""Side by side: the service, the passthrough app (HTTP floor) and boto3 direct (storage floor).

For each image size and concurrency, uploads then downloads, the three
systems take turns in short rounds (the order rotating each round), so a
change in the machine's load hits all three alike. Uploaded objects are deleted after each size to keep moto's memory
flat; downloads read one seeded object per size and system.
"""

import json
import uuid
from dataclasses import dataclass

import boto3

import config
import storage
from bench import stack as bench_stack
from bench.load import Boto3Call, Cell, ClientPool, HttpCall
from storage.s3 import CLIENT_CONFIG

SYSTEMS = ("service", "passthrough", "boto3")
# Requests this large take seconds each and every round ends by waiting for
# the ones in flight: one round keeps the run within its time budget.
ONE_ROUND_FROM_BYTES = 4_000_000
DIRECTIONS = ("upload", "download")
TOKEN_HEADER = "Coder-Session-Token"


@dataclass
class Account:
    token: str
    organization_id: str
    user_id: str


def create_account(service, name):
    created = service.flask("create-user", name, "--org", f"{name}-org")
    return Account(created["token"], created["organization_id"], created["user_id"])


class Grid:
    def __init__(self, stack, content_type, duration, max_requests, rounds=2, log=print):
        self.stack = stack
        self.content_type = content_type
        self.duration = duration
        self.max_requests = max_requests
        self.rounds = rounds
        self.log = log
        self.uploader = create_account(stack.service, "bench-uploader")
        self.downloader = create_account(stack.service, "bench-downloader")
        self.s3 = self.new_s3_client()
        # The service's store as it makes it, for where the service puts objects (its layout is the store's).
        self.store = storage.from_config({**config.DEFAULTS, **stack.s3_environment()})
        self.boto3_clients = ClientPool(self.new_s3_client)  # the storage floor's, one per client thread
        self.service_pids = lambda: [stack.service.pid, *stack.service.worker_pids()]
        self.passthrough_pids = lambda: [stack.passthrough.pid, *stack.passthrough.worker_pids()]
        self.bare_pids = lambda: [stack.bare.pid, *stack.bare.worker_pids()]
        self.flask_floor_pids = lambda: [stack.flask_floor.pid, *stack.flask_floor.worker_pids()]
        self.contract_floor_pids = lambda: [stack.contract_floor.pid, *stack.contract_floor.worker_pids()]
        self.moto_pids = [bench_stack.moto_pid(stack.moto)]

    def new_s3_client(self):
        return boto3.session.Session().client("s3", endpoint_url=self.stack.moto.endpoint_url, config=CLIENT_CONFIG)

    # -- the grid --

    def warm_up(self, small_image, waves=3, concurrency=24):
        """Put the servers in their steady state before anything is timed.

        Each gunicorn thread builds its boto3 client on first use (~0.1-0.5 s
        of CPU). Waves of concurrent requests on fresh connections reach most
        threads of both workers, so no timed request pays that one-off cost.
        """
        seeds = self.seed(small_image)
        for _ in range(waves):
            for system in ("service", "passthrough"):
                for direction in DIRECTIONS:
                    self._warm(*self._call(system, direction, small_image, seeds[system]), concurrency)
            for port, pids in ((self.stack.bare.port, self.bare_pids),
                               (self.stack.flask_floor.port, self.flask_floor_pids)):
                self._warm(HttpCall(port, "GET", "/api/v2/chats/files/x", status=304, expect_bytes=0,
                                    warm_path="/api/v2/chats/files/x"), pids, concurrency)
        self._delete_uploads()

    def _warm(self, call, pids, concurrency=24):
        """One untimed wave of ``call`` at ``concurrency``: the server's threads exist and have served once."""
        cell = Cell(call, concurrency, pids, self.moto_pids)
        try:
            cell.run(0.3, 10 * concurrency)
        finally:
            cell.close()

    def run(self, images, concurrencies):
        """{(system, direction, size_label, concurrency): CellResult}."""
        results = {}
        for label, data in images.items():
            for concurrency in concurrencies:
                calls = {system: self._call(system, "upload", data, None) for system in SYSTEMS}
                for system, result in self._side_by_side(calls, concurrency, len(data)).items():
                    results[system, "upload", label, concurrency] = result
                    self._report(f"{system} upload", f"{len(data)} B", concurrency, result)
            self._delete_uploads()
            seeds = self.seed(data)
            for concurrency in concurrencies:
                calls = {system: self._call(system, "download", data, seeds[system]) for system in SYSTEMS}
                for system, result in self._side_by_side(calls, concurrency, len(data)).items():
                    results[system, "download", label, concurrency] = result
                    self._report(f"{system} download", f"{len(data)} B", concurrency, result)
        return results

    def conditional(self, data, concurrencies):
        """304 against 200 for the same file, and the 304s of the floors beside them: the bare app's, the
        one-route Flask app's, and the contract's minimum (bench/contract_304.py, on the service's database).

        {("304"|"200"|"bare"|"flask"|"contract", concurrency): CellResult}
        """
        file_id, etag = self.seed_service_file(data)
        path = f"/api/v2/chats/files/{file_id}"
        contract = HttpCall(self.stack.contract_floor.port, "GET", path, {TOKEN_HEADER: self.downloader.token,
                                                                          "If-None-Match": etag},
                            status=304, expect_bytes=0, warm_path=path)
        self._warm(contract, self.contract_floor_pids)  # its threads' pooled connections, like the service's
        results = {}
        for concurrency in concurrencies:
            calls = {}
            for status in ("200", "304"):
                headers = {TOKEN_HEADER: self.downloader.token}
                if status == "304":
                    headers["If-None-Match"] = etag
                call = HttpCall(self.stack.service.port, "GET", path, headers,
                                status=int(status), expect_bytes=len(data) if status == "200" else 0)
                calls[status] = (call, self.service_pids)
            # The same request to a trivial app under the same gunicorn: the floor of a 304.
            bare = HttpCall(self.stack.bare.port, "GET", path, {TOKEN_HEADER: self.downloader.token,
                                                                "If-None-Match": etag},
                            status=304, expect_bytes=0, warm_path="/")
            calls["bare"] = (bare, self.bare_pids)
            flask = HttpCall(self.stack.flask_floor.port, "GET", path, {TOKEN_HEADER: self.downloader.token,
                                                                       "If-None-Match": etag},
                             status=304, expect_bytes=0, warm_path=path)
            calls["flask"] = (flask, self.flask_floor_pids)
            calls["contract"] = (contract, self.contract_floor_pids)
            for status, result in self._side_by_side(calls, concurrency).items():
                results[status, concurrency] = result
                self._report(f"GET {status}", f"{len(data)} B", concurrency, result)
        return results

    # -- cells --

    def _side_by_side(self, calls, concurrency, size=0):
        """Run {name: (call, server pids)} in interleaved rounds; {name: merged CellResult}."""
        cells = {name: Cell(call, concurrency, pids, self.moto_pids) for name, (call, pids) in calls.items()}
        names = list(cells)
        rounds = 1 if size >= ONE_ROUND_FROM_BYTES else self.rounds
        try:
            for round_number in range(rounds):
                turn = round_number % len(names)
                for name in names[turn:] + names[:turn]:
                    cells[name].run(self.duration / rounds, max(1, self.max_requests // rounds))
        finally:
            for cell in cells.values():
                cell.close()
        return {name: cell.result() for name, cell in cells.items()}

    def _call(self, system, direction, data, seed, content_type=None):
        content_type = content_type or self.content_type
        if system == "service":
            return self._service_call(direction, data, seed, content_type), self.service_pids
        if system == "passthrough":
            return self._passthrough_call(direction, data, seed, content_type), self.passthrough_pids
        return self._boto3_call(direction, data, seed), ()

    def _service_call(self, direction, data, file_id, content_type):
        port = self.stack.service.port
        if direction == "upload":
            headers = {TOKEN_HEADER: self.uploader.token, "Content-Type": content_type}
            path = f"/api/v2/chats/files?organization={self.uploader.organization_id}"
            return HttpCall(port, "POST", path, headers, body=data, status=201)
        headers = {TOKEN_HEADER: self.downloader.token}
        return HttpCall(port, "GET", f"/api/v2/chats/files/{file_id}", headers, expect_bytes=len(data))

    def _passthrough_call(self, direction, data, key, content_type):
        port = self.stack.passthrough.port
        if direction == "upload":
            return HttpCall(port, "POST", lambda: f"/objects/passthrough/up/{uuid.uuid4()}",
                            {"Content-Type": content_type}, body=data, status=201, warm_path="/")
        return HttpCall(port, "GET", f"/objects/{key}", expect_bytes=len(data), warm_path="/")

    def thumbnail_calls(self, file_id):
        """GET of a seeded file's thumbnail from the service, and of the same object through the passthrough.

        {system: (call, pids)}: a variant download against its floor, the same bytes from the same store.
        """
        key = self.store.variant_key(self.downloader.organization_id, file_id, "thumbnail")
        size = self.s3.head_object(Bucket=bench_stack.BUCKET, Key=key)["ContentLength"]
        service = HttpCall(self.stack.service.port, "GET", f"/api/v2/chats/files/{file_id}/thumbnail",
                           {TOKEN_HEADER: self.downloader.token}, expect_bytes=size)
        passthrough = HttpCall(self.stack.passthrough.port, "GET", f"/objects/{key}", expect_bytes=size,
                               warm_path="/")
        return {"service": (service, self.service_pids), "passthrough": (passthrough, self.passthrough_pids)}

    def _boto3_call(self, direction, data, key):
        if direction == "upload":
            return Boto3Call(self.boto3_clients, bench_stack.BUCKET, "upload", data, prefix="direct/up/",
                             content_type=self.content_type)
        return Boto3Call(self.boto3_clients, bench_stack.BUCKET, "download", data, key=key)

    # -- objects --

    def seed(self, data, content_type=None):
        """One stored copy per system to download: {system: file id or key}."""
        content_type = content_type or self.content_type
        key = f"seed/{uuid.uuid4()}"
        self.s3.put_object(Bucket=bench_stack.BUCKET, Key=key, Body=data, ContentType=content_type)
        file_id, _ = self.seed_service_file(data, content_type)
        return {"service": file_id, "passthrough": key, "boto3": key}

    def seed_service_file(self, data, content_type=None):
        """Upload ``data`` as the downloader; return (file id, ETag)."""
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.stack.service.port, timeout=60)
        try:
            connection.request(
                "POST", f"/api/v2/chats/files?organization={self.downloader.organization_id}", body=data,
                headers={TOKEN_HEADER: self.downloader.token, "Content-Type": content_type or self.content_type})
            response = connection.getresponse()
            body = response.read()
            if response.status != 201:
                raise RuntimeError(f"seeding upload failed: {response.status} {body[:300]!r}")
            file_id = json.loads(body)["id"]
            connection.request("HEAD", f"/api/v2/chats/files/{file_id}", headers={TOKEN_HEADER: self.downloader.token})
            response = connection.getresponse()
            response.read()
            return file_id, response.getheader("ETag")
        finally:
            connection.close()

    def _delete_uploads(self):
        for prefix in (f"chat-files/{self.uploader.organization_id}/", "passthrough/up/", "direct/up/"):
            delete_prefix(self.s3, bench_stack.BUCKET, prefix)

    def _report(self, what, size, concurrency, result):
        self.log(
            f"  {what:22} {size:>12} c={concurrency:<3} {result.requests:5d} req {result.rate:8.1f}/s "
            f"{result.mb_per_second:8.1f} MB/s p50 {1000 * result.percentile(0.5):8.1f} ms "
            f"p99 {1000 * result.percentile(0.99):8.1f} ms" + (f"  errors {result.errors}: {result.first_error}"
                                                            if result.errors else "")
        )


def delete_prefix(client, bucket, prefix):
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
