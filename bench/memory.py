"""Peak RSS of one gunicorn worker while 8 clients upload, then download, ~10 MiB images at once.

Runs against a service started with WEB_CONCURRENCY=1 so "the worker" is
one process. The baseline is the worker's RSS after a warm-up of two waves
of 16 concurrent small uploads and downloads: the threads exist and each has
built its S3 client (~17 MiB each, see docs/PERFORMANCE.md), as in a server
that has been up a while, so the peak measures the images, not first use. The peak is VmHWM after
resetting it with clear_refs, backed by sampling VmRSS every 5 ms.
"""

import http.client
import json
import threading
from dataclasses import dataclass, field

from bench import procstat
from bench.grid import TOKEN_HEADER, create_account
from bench.sample_images import pixel_count

CLIENTS = 8
ROUNDS = 3


@dataclass
class MemoryResult:
    content_type: str
    image_bytes: int
    pixels: int
    direction: str
    baseline_kib: int
    peak_kib: int
    after_kib: int
    timeline: list = field(repr=False, default_factory=list)  # (seconds, KiB)
    errors: list = field(default_factory=list)

    @property
    def growth_mib(self):
        return (self.peak_kib - self.baseline_kib) / 1024

    def summary(self):
        return {
            "content_type": self.content_type, "image_bytes": self.image_bytes, "pixels": self.pixels,
            "direction": self.direction, "baseline_kib": self.baseline_kib, "peak_kib": self.peak_kib,
            "after_kib": self.after_kib, "growth_mib": round(self.growth_mib, 1), "errors": self.errors[:3],
        }


class MemoryBench:
    def __init__(self, service, content_type, small_image, log=print):
        self.service = service
        self.content_type = content_type
        self.account = create_account(service, f"bench-memory-{content_type.split('/')[1]}")
        (self.worker_pid,) = service.worker_pids()
        self.log = log
        self._warm_up(small_image)

    def run(self, big_image):
        uploads, file_ids = self._measure("upload", big_image, self._upload)
        downloads, _ = self._measure("download", big_image, self._download, file_ids)
        return [uploads, downloads]

    def _warm_up(self, small_image, waves=2):
        for _ in range(waves):
            ids = self._all_at_once(self._upload, [small_image] * (2 * CLIENTS))
            self._all_at_once(self._download, [file_id for file_id in ids if file_id])

    def _measure(self, direction, data, action, file_ids=None):
        baseline = procstat.status_kib(self.worker_pid, "VmRSS")
        exact_peak = procstat.reset_peak_rss(self.worker_pid)
        results, errors = [], []
        with procstat.RssSampler(self.worker_pid) as sampler:
            for _ in range(ROUNDS):
                arguments = [data] * CLIENTS if file_ids is None else file_ids[:CLIENTS]
                outcome = self._all_at_once(action, arguments, errors)
                results.extend(outcome)
        peak = max(sampler.peak_kib, procstat.status_kib(self.worker_pid, "VmHWM") if exact_peak else 0)
        after = procstat.status_kib(self.worker_pid, "VmRSS")
        result = MemoryResult(self.content_type, len(data), pixel_count(data), direction, baseline, peak, after,
                              sampler.samples, errors)
        self.log(f"  {direction:8} {self.content_type:10} {len(data)} B x{CLIENTS}: baseline "
                 f"{baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB (+{result.growth_mib:.1f}), "
                 f"after {after / 1024:.1f} MiB" + (f", errors: {errors[:1]}" if errors else ""))
        return result, [value for value in results if value]

    def _all_at_once(self, action, arguments, errors=None):
        """Run ``action(argument)`` in one thread each, released together by a barrier."""
        barrier = threading.Barrier(len(arguments))
        outcomes = [None] * len(arguments)

        def one(index, argument):
            barrier.wait()
            try:
                outcomes[index] = action(argument)
            except Exception as error:  # noqa: BLE001 - reported with the figures
                if errors is not None:
                    errors.append(repr(error))

        threads = [threading.Thread(target=one, args=(index, argument)) for index, argument in enumerate(arguments)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        return outcomes

    def _connection(self):
        return http.client.HTTPConnection("127.0.0.1", self.service.port, timeout=60)

    def _upload(self, data):
        connection = self._connection()
        try:
            connection.request("POST", f"/api/v2/chats/files?organization={self.account.organization_id}", body=data,
                               headers={TOKEN_HEADER: self.account.token, "Content-Type": self.content_type})
            response = connection.getresponse()
            body = response.read()
            if response.status != 201:
                raise RuntimeError(f"upload: {response.status} {body[:200]!r}")
            return json.loads(body)["id"]
        finally:
            connection.close()

    def _download(self, file_id):
        connection = self._connection()
        try:
            connection.request("GET", f"/api/v2/chats/files/{file_id}", headers={TOKEN_HEADER: self.account.token})
            response = connection.getresponse()
            # Read in pieces as a browser does; the worker streams, so it should not hold the whole file.
            while response.read(64 * 1024):
                pass
            if response.status != 200:
                raise RuntimeError(f"download: {response.status}")
            return file_id
        finally:
            connection.close()
