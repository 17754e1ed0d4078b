"""What the service costs beyond its floors, per image type and size (issue 11).

- upload overhead = service CPU per upload − passthrough CPU per upload −
  the image work of those same uploads, measured by the workers themselves
  (thread CPU around the one call that does it, the
  ``chatfiles_upload_image_cpu_seconds`` counter, read from the service's
  metrics files between rounds, so reading it costs the workers nothing);
  the same work timed in this process on the same file is reported beside
  it: the two differ by what the worker's surroundings add to a decode
  (its allocator settings, caches shared with moto and the client);
- variant puts = this process's boto3 CPU for the objects an upload writes
  beside the original (thumbnail, preview), which the passthrough does
  not: a floor inside the upload overhead;
- spool = this process's CPU for taking the same body in as the upload view
  does (``bodies.SpooledBody``: SHA-256 and a temporary file, in the
  view's read chunks): the hash is the contract's (the ETag, ``/info``, the
  object metadata) and the file is the slow-client defence, so a floor too;
- download overhead = service CPU per download − passthrough CPU per download;
  the same for the file's thumbnail (a variant download: the service's
  ``/thumbnail`` route against the same object through the passthrough);
- 304 overhead (in the conditional section) = a 304's CPU − a bare request's
  on bench/bare.py under the same gunicorn settings.

One client (c=1), the service and passthrough cells interleaved in three
rounds; each figure is the median of the three rounds' differences, so one
noisy round on a shared machine does not decide it.
"""

import statistics
import time

from prometheus_client import CollectorRegistry, multiprocess

import config
from bench.load import Cell
from bench.stack import BUCKET
from imaging import variants
from web import bodies

ROUNDS = 3
CONCURRENCY = 1


def image_work(data, settings=config.DEFAULTS):
    """The image work of one upload, as the upload view does it once the body is spooled:
    the one call attachments/decode.py ``verify_and_make`` makes (in its sandbox: verifying decode, thumbnail and
    preview)."""
    return variants.verify_and_make(data, settings["MAX_IMAGE_PIXELS"], settings["MAX_DECODE_MEMORY"], "0" * 64)


def time_image_work(data, budget_seconds=0.5, max_runs=7):
    """(median CPU seconds of ``image_work(data)`` on this thread, 3 to ``max_runs`` runs, the variants it made).

    CPU, not wall time: the machine may be busy.
    """
    if len(data) < 1_000_000:
        image_work(data)  # warm: Pillow's plugins load on first use (small files come first; a big run costs seconds)
    runs = []
    started = time.perf_counter()
    while len(runs) < max_runs and (len(runs) < 3 or time.perf_counter() - started < budget_seconds):
        begin = time.thread_time()
        _, _, made = image_work(data)
        runs.append(time.thread_time() - begin)
    return statistics.median(runs), made


def time_spool(data, runs=5):
    """Median thread CPU seconds of spooling ``data`` as the upload view does: SHA-256 and a temporary file."""
    samples = []
    for _ in range(runs):
        begin = time.thread_time()
        body = bodies.SpooledBody()
        try:
            for start in range(0, len(data), bodies.READ_CHUNK):
                body.write(data[start:start + bodies.READ_CHUNK])
            body.sha256
        finally:
            body.close()
        samples.append(time.thread_time() - begin)
    return statistics.median(samples)


def time_variant_puts(client, bucket, made, runs=5):
    """Median thread CPU seconds of putting the variants an upload stored (``made``), from this process.

    Each variant is one more object (the bucket layout is public), and the
    passthrough puts only the original: this is the part of the upload
    overhead that is boto3's and the store's, whatever the service does.
    """
    stored = [variant for variant in made if not variant.original]
    if not stored:
        return 0.0
    samples = []
    for run in range(runs + 1):
        begin = time.thread_time()
        for variant in stored:
            client.put_object(Bucket=bucket, Key=f"bench-variant-puts/{variant.name}", Body=variant.data,
                              ContentType=variant.content_type, Metadata={"variant": variant.name})
        if run:  # the first warms the connection
            samples.append(time.thread_time() - begin)
    return statistics.median(samples)


def worker_image_seconds(metrics_dir):
    """The service's ``chatfiles_upload_image_cpu_seconds_total``, summed over its workers' metrics files."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    return sum(sample.value for family in registry.collect() for sample in family.samples
               if sample.name == "chatfiles_upload_image_cpu_seconds_total")


def cpu_ms(result):
    return 1000 * result.server_cpu / result.requests if result.requests else float("nan")


def side_by_side(name, rounds):
    """``{name}_service_ms`` and ``{name}_passthrough_ms``: each system's median CPU ms per request over its rounds."""
    return {f"{name}_{system}_ms": round(statistics.median(map(cpu_ms, rounds[system])), 3)
            for system in ("service", "passthrough")}


def median_difference(rounds_a, rounds_b, less_ms=None):
    """Median over rounds of (CPU ms per request of a − of b − ``less_ms[i]``); rounds are paired by index."""
    less_ms = less_ms or [0.0] * len(rounds_a)
    values = [cpu_ms(a) - cpu_ms(b) - less for a, b, less in zip(rounds_a, rounds_b, less_ms)
              if a.requests and b.requests]
    return statistics.median(values) if values else float("nan")


class OverheadBench:
    def __init__(self, grid, duration, log=print, image_work_done=None):
        self.grid = grid
        self.duration = duration
        self.log = log
        # {(content type, size label): (image work ms, variants made)} already measured
        self.image_work_done = image_work_done or {}

    def run(self, images_by_type):
        """``{content_type: {size label: bytes}}`` -> rows, one per (type, size)."""
        rows = []
        for content_type, by_label in images_by_type.items():
            for label, data in by_label.items():
                rows.append(self.measure(content_type, label, data))
        return rows

    def measure(self, content_type, label, data):
        grid = self.grid
        done = self.image_work_done.get((content_type, label))
        if done is None:
            seconds, made = time_image_work(data)
            done = 1000 * seconds, made
        bench_work_ms, made = done
        image_seconds = []  # per service upload round: the workers' own image-work CPU
        upload_rounds = self._rounds({system: grid._call(system, "upload", data, None, content_type)
                                      for system in ("service", "passthrough")},
                                     probes={"service": (lambda: worker_image_seconds(grid.stack.service.metrics_dir),
                                                         image_seconds)})
        grid._delete_uploads()
        seeds = grid.seed(data, content_type)
        download_rounds = self._rounds({system: grid._call(system, "download", data, seeds[system], content_type)
                                        for system in ("service", "passthrough")})
        thumbnail_rounds = self._rounds(grid.thumbnail_calls(seeds["service"]))
        work_ms = [1000 * seconds / result.requests if result.requests else float("nan")
                   for seconds, result in zip(image_seconds, upload_rounds["service"])]
        puts_ms = 1000 * time_variant_puts(grid.s3, BUCKET, made)
        spool_ms = 1000 * time_spool(data)
        upload_overhead = median_difference(upload_rounds["service"], upload_rounds["passthrough"], work_ms)
        row = {
            "content_type": content_type, "size_label": label, "bytes": len(data),
            "image_work_ms": round(statistics.median(work_ms), 3),
            "image_work_bench_ms": round(bench_work_ms, 3),
            **side_by_side("upload", upload_rounds),
            "upload_overhead_ms": round(upload_overhead, 3),
            "variant_puts_ms": round(puts_ms, 3),
            "spool_ms": round(spool_ms, 3),
            "upload_overhead_beyond_floors_ms": round(upload_overhead - puts_ms - spool_ms, 3),
            **side_by_side("download", download_rounds),
            "download_overhead_ms": round(median_difference(download_rounds["service"],
                                                            download_rounds["passthrough"]), 3),
            **side_by_side("thumbnail", thumbnail_rounds),
            "thumbnail_overhead_ms": round(median_difference(thumbnail_rounds["service"],
                                                             thumbnail_rounds["passthrough"]), 3),
            "requests": {f"{direction} {system}": sum(r.requests for r in rounds[system])
                         for direction, rounds in (("upload", upload_rounds), ("download", download_rounds),
                                                   ("thumbnail", thumbnail_rounds))
                         for system in rounds},
            "errors": [r.first_error for rounds in (upload_rounds, download_rounds, thumbnail_rounds)
                       for results in rounds.values() for r in results if r.first_error][:3],
        }
        self.log(f"  {content_type:10} {label:>6}: image work {row['image_work_ms']:7.2f} ms "
                 f"(here {bench_work_ms:7.2f}), variant puts {puts_ms:5.2f} ms, spool {spool_ms:5.2f} ms, "
                 f"upload overhead {row['upload_overhead_ms']:7.2f} ms, "
                 f"download overhead {row['download_overhead_ms']:6.2f} ms, "
                 f"thumbnail overhead {row['thumbnail_overhead_ms']:6.2f} ms"
                 + (f"  errors: {row['errors'][0][:120]}" if row["errors"] else ""))
        return row

    def _rounds(self, calls, probes=None):
        """{system: [CellResult per round]}, the systems' rounds interleaved, the order rotating.

        ``probes``: {system: (read, deltas)}; ``read()`` is called around each of
        that system's rounds and the difference appended to ``deltas``.
        """
        cells = {name: Cell(call, CONCURRENCY, pids, self.grid.moto_pids) for name, (call, pids) in calls.items()}
        names = list(cells)
        per_round = {name: [] for name in names}
        probes = probes or {}
        try:
            for round_number in range(ROUNDS):
                turn = round_number % len(names)
                for name in names[turn:] + names[:turn]:
                    read, deltas = probes.get(name, (lambda: 0.0, []))
                    before = read()
                    per_round[name].append(cells[name].run(self.duration / ROUNDS, 2000))
                    deltas.append(read() - before)
        finally:
            for cell in cells.values():
                cell.close()
        return per_round
