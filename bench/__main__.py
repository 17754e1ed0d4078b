"""``python -m bench``: run the benchmark and write docs/PERFORMANCE.md.

Sections: grid (service / passthrough / boto3 side by side), conditional
(304 vs 200 vs a bare app's 304), overhead (the service's CPU beyond the
passthrough and the image work, per type and size), verify (Pillow), memory
(one worker under 8 x 10 MiB), watch (git watch latency and idle CPU); a
complete run then runs ``scripts/bench variants`` (bench/variants.py, which
also runs alone) and ``scripts/bench sandbox`` (bench/sandbox.py: parsing in
sandbox processes, before and after) and ``scripts/bench attachments``
(bench/attachments.py: a 10 MiB text, JSON and PDF upload's check against
reading it). ``scripts/bench chat-files`` runs
alone: a chat's GET with 50 linked files and with none, on SQLite and
PostgreSQL (bench/chat_files.py). ``scripts/bench quota`` runs alone: what
the usage counter and ORG_STORAGE_QUOTA add to an upload, on SQLite and
PostgreSQL (bench/quota.py). ``scripts/bench watch-scale`` runs
alone: git-watch sockets held by one instance and what they cost. ``--database postgres`` runs grid, conditional and
overhead against PostgreSQL and rewrites only the PostgreSQL section of the
page. With a subset of sections, or --quick, results go to var/bench/ only
and docs/ is left alone unless --write-docs is given. ``--render FILE``
rebuilds the docs from saved results. ``scripts/bench targets [--runs 3]``
runs the sections the issue-11 targets judge (conditional, overhead,
memory) several times on fresh stacks and writes the targets, judged on
each figure's median, in their own section.
"""

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the service's modules (storage, imaging) and harness/

from bench import page, procstat  # noqa: E402
from bench.machine import gunicorn_facts, machine_facts  # noqa: E402
from bench.sample_images import cached_image, pixel_count  # noqa: E402

SECTIONS = ("grid", "conditional", "overhead", "verify", "memory", "watch")
POSTGRES_SECTIONS = ("grid", "conditional", "overhead")
SIZES = {"10 KB": 10_000, "100 KB": 100_000, "1 MB": 1_000_000, "8 MB": 8_000_000}
MEMORY_IMAGE = (10_200_000, 10 * 1024 * 1024)  # about 10 MiB, never over the default upload limit
MEMORY_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
VERIFY_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
CONDITIONAL_SIZE = "1 MB"
WATCH_FILES = (1, 100, 1000)
CACHE_DIR = ROOT / "var" / "bench" / "images"
POSTGRES_LATEST = "results-postgres-latest.json"
TARGETS_LATEST = "results-targets-latest.json"
TARGET_SECTIONS = ("conditional", "overhead", "memory")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=None, help="comma-separated subset of " + ", ".join(SECTIONS))
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated subset of " + ", ".join(SIZES))
    parser.add_argument("--concurrency", default="1,16", help="client threads per cell, comma-separated (default 1,16)")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per cell (default 1)")
    parser.add_argument("--overhead-duration", type=float, default=1.0,
                        help="seconds per overhead cell, split in three rounds (default 1)")
    parser.add_argument("--max-requests", type=int, default=4000, help="request cap per cell")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per cell (default 2)")
    parser.add_argument("--format", default="image/jpeg", choices=VERIFY_TYPES, help="image type of the grid")
    parser.add_argument("--database", default="sqlite", choices=("sqlite", "postgres"))
    parser.add_argument("--watch-rounds", type=int, default=12, help="write→message rounds per workspace")
    parser.add_argument("--idle-seconds", type=float, default=6, help="seconds per idle-CPU measurement")
    parser.add_argument("--scale-seconds", type=float, default=11,
                        help="seconds per CPU window of the large-workspace cases (over the 10 s rescan)")
    parser.add_argument("--watch-only", action="store_true",
                        help="run only the watch section and rewrite only its part of docs/PERFORMANCE.md")
    parser.add_argument("--quick", action="store_true", help="short cells, for trying the benchmark out")
    parser.add_argument("--write-docs", action="store_true", help="write docs/ even for a partial run")
    parser.add_argument("--render", metavar="RESULTS_JSON", help="only rebuild docs/ from saved results")
    args = parser.parse_args(argv)
    default_sections = POSTGRES_SECTIONS if args.database == "postgres" else SECTIONS
    args.sections = [name for name in (args.sections or ",".join(default_sections)).split(",") if name]
    args.sizes = {label.strip(): SIZES[label.strip()] for label in args.sizes.split(",") if label.strip()}
    args.concurrency = [int(value) for value in args.concurrency.split(",")]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if args.quick:
        args.duration, args.watch_rounds, args.idle_seconds, args.scale_seconds = 0.7, 6, 3, 4
        args.overhead_duration = 0.6
    if args.watch_only:
        args.sections = ["watch"]
    return args


def log(message):
    print(message, flush=True)


def run(args):
    from bench.stack import Stack

    started = time.perf_counter()
    results = {"meta": {
        **machine_facts(),
        "command": " ".join(["scripts/bench", *sys.argv[1:]]),
        "gunicorn": gunicorn_facts(),
        "content_type": args.format,
        "sizes": args.sizes,
        "concurrencies": args.concurrency,
        "duration_s": args.duration,
        "max_requests": args.max_requests,
        "rounds": args.rounds,
        "load_before": procstat.load_average(),
        "sections": args.sections,
    }}
    log("preparing images (cached in var/bench/images)")
    prepare_images(args)
    grid_images = {label: cached_image(CACHE_DIR, args.format, size) for label, size in args.sizes.items()}
    sample = grid_images[max(args.sizes, key=args.sizes.get)]
    results["meta"]["bytes_per_pixel"] = round(len(sample) / pixel_count(sample), 2)

    timed = results["meta"]["section_seconds"] = {}

    def timing(name, function, *arguments):
        begin = time.perf_counter()
        function(*arguments)
        timed[name] = round(time.perf_counter() - begin, 1)

    image_work_done = {}  # the verify section's, reused by the overhead section (the same call on the same files)
    if "verify" in args.sections:
        timing("verify", run_verify, args, results, image_work_done)

    work_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        with Stack(work_dir, database=args.database) as stack:
            log(f"starting moto, service and passthrough under {work_dir}")
            stack.start()
            results["meta"]["database"] = stack.database_label()
            if {"grid", "conditional", "overhead"} & set(args.sections):
                timing("grid, conditional, overhead", run_grid, args, stack, grid_images, results, image_work_done)
            if "memory" in args.sections:
                timing("memory", run_memory, args, stack, results)
            if "watch" in args.sections:
                timing("watch", run_watch, args, stack, results)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    results["meta"]["elapsed_s"] = time.perf_counter() - started
    results["meta"]["load_after"] = procstat.load_average()
    results["meta"]["finished_at"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return results


def prepare_images(args):
    """Make every sample image the run's sections will ask for, on every core at once, largest first.

    On a fresh clone nothing is cached and making them one after another
    took a tenth of the run; the sections then read them from the cache.
    """
    from concurrent.futures import ProcessPoolExecutor

    from bench import variants

    wanted = {(args.format, size, None) for size in args.sizes.values()}
    if {"verify", "overhead"} & set(args.sections):
        wanted |= {(content_type, size, None) for content_type in VERIFY_TYPES for size in args.sizes.values()}
    if "memory" in args.sections:
        wanted |= {(content_type, *sizes) for content_type in MEMORY_TYPES
                   for sizes in ((10_000, None), MEMORY_IMAGE)}
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        made = [pool.submit(cached_image, CACHE_DIR, *image) for image in sorted(wanted, key=lambda w: -w[1])]
        if complete_run(args):
            made += [pool.submit(variants.sample, label) for label in variants.SAMPLES]
        for future in made:
            future.result()  # an image that could not be made fails the run here, not half-way through


def complete_run(args):
    """Every section of the kind of run, not --quick: the one that rewrites docs/ (and runs the variants)."""
    postgres = args.database == "postgres"
    return set(args.sections) == set(POSTGRES_SECTIONS if postgres else SECTIONS) and not args.quick


def run_verify(args, results, done):
    """The verify section; ``done`` gets {(type, size label): (ms, variants made)} for the overhead section."""
    from bench.overhead import time_image_work

    log("verify: an upload's image work (bench.overhead.image_work: images.verify_image) per type and size")
    images = {(content_type, label): cached_image(CACHE_DIR, content_type, size)
              for content_type in VERIFY_TYPES for label, size in args.sizes.items()}
    results["verify"] = []
    for (content_type, label), data in images.items():
        seconds, made = time_image_work(data)
        done[content_type, label] = 1000 * seconds, made
        row = {"content_type": content_type, "size_label": label, "bytes": len(data), "pixels": pixel_count(data),
               "ms": 1000 * seconds}
        results["verify"].append(row)
        log(f"  {content_type:11} {label:>7}: {row['ms']:8.2f} ms ({row['pixels'] / 1e6:.2f} Mpx)")


def run_grid(args, stack, grid_images, results, image_work_done):
    from bench.grid import Grid

    grid = Grid(stack, args.format, args.duration, args.max_requests, rounds=args.rounds, log=log)
    log("warming up the service and passthrough workers")
    grid.warm_up(grid_images[min(args.sizes, key=args.sizes.get)])
    if "grid" in args.sections:
        log("grid: service / passthrough / boto3, uploads then downloads")
        cells = grid.run(grid_images, args.concurrency)
        results["grid"] = [{"system": system, "direction": direction, "size_label": label,
                            "size_bytes": args.sizes[label], "concurrency": c, **cell.summary()}
                           for (system, direction, label, c), cell in cells.items()]
    if "conditional" in args.sections:
        label = CONDITIONAL_SIZE if CONDITIONAL_SIZE in grid_images else next(iter(grid_images))
        log(f"conditional: 304 against 200 at {label}")
        cells = grid.conditional(grid_images[label], args.concurrency)
        results["conditional_size_label"] = label
        results["conditional"] = [{"status": status, "concurrency": c, **cell.summary()}
                                  for (status, c), cell in cells.items()]
    if "overhead" in args.sections:
        run_overhead(args, grid, results, image_work_done)


def run_overhead(args, grid, results, image_work_done):
    from bench.overhead import OverheadBench

    log("overhead: service − passthrough − image work per upload, service − passthrough per download (c=1)")
    images = {content_type: {label: cached_image(CACHE_DIR, content_type, size) for label, size in args.sizes.items()}
              for content_type in VERIFY_TYPES}
    results["overhead"] = OverheadBench(grid, args.overhead_duration, log=log,
                                        image_work_done=image_work_done).run(images)


def run_memory(args, stack, results):
    from bench.memory import MemoryBench

    log("memory: one worker (WEB_CONCURRENCY=1), 8 concurrent ~10 MiB uploads then downloads")
    results["memory"] = []
    for content_type in MEMORY_TYPES:
        # A fresh service per type: what one type leaves allocated must not raise the next baseline.
        service = stack.start_service(f"memory-{content_type.split('/')[1]}", WEB_CONCURRENCY=1)
        small = cached_image(CACHE_DIR, content_type, 10_000)
        big = cached_image(CACHE_DIR, content_type, *MEMORY_IMAGE)
        bench = MemoryBench(service, content_type, small, log=log)
        for measured in bench.run(big):
            results["memory"].append({**measured.summary(), "timeline": [(round(t, 3), kib)
                                                                         for t, kib in measured.timeline]})
        stack.stop(service)


def run_watch(args, stack, results):
    from bench.watch import SCALE_CASES, SCALE_SOCKETS, WatchBench, WatchUnavailable, measure_scale

    log("starting a single-worker service (WEB_CONCURRENCY=1) for the watch")
    bench = WatchBench(stack.start_service("watch", WEB_CONCURRENCY=1), log=log)
    log("watch: write→message latency and idle CPU")
    watch = {"available": True, "latency": []}
    try:
        for files in WATCH_FILES:
            measured = bench.latency(files, args.watch_rounds, budget_seconds=30)
            watch["latency"].append(measured.summary())
        watch["idle"] = bench.idle_cpu(args.idle_seconds)
        log(f"watch: large workspaces, {SCALE_SOCKETS} sockets each, each on a single-worker service of its own")
        cases = []
        try:
            for number, (label, repositories, untracked) in enumerate(SCALE_CASES):
                service = stack.start_service(f"watch-scale-{number}", WEB_CONCURRENCY=1)
                cases.append(WatchBench(service, log=log).open_scale(label, repositories, untracked))
        except BaseException:
            for case in cases:
                case.close()
            raise
        watch["scale"] = measure_scale(cases, args.scale_seconds, log)
    except WatchUnavailable as why:
        watch = {"available": False, "reason": str(why)}
        log(f"  git watch: not available: {why}")
    results["watch"] = watch


RESULTS_DIR = ROOT / "var" / "bench"


def save(results, latest="results-latest.json"):
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1))
    if latest:  # what --render rebuilds the whole page from: a watch-only run must not replace it
        (RESULTS_DIR / latest).write_text(json.dumps(results, indent=1))
    return path


def saved(name):
    path = RESULTS_DIR / name
    return json.loads(path.read_text()) if path.exists() else None


def write_docs(results):
    log(f"wrote {page.write(results, ROOT / 'docs')}")
    postgres = saved(POSTGRES_LATEST)
    if postgres:  # its SQLite column follows the page's run
        page.write_postgres(postgres, ROOT / "docs", results)


def run_targets(argv):
    """The sections the issue-11 targets judge, ``--runs`` times on fresh stacks; their own section of the page."""
    runs = 3
    if argv[:1] == ["--runs"]:
        runs, argv = int(argv[1]), argv[2:]
    args = parse_args(["--sections", ",".join(TARGET_SECTIONS), *argv])
    results = []
    for number in range(1, runs + 1):
        log(f"targets: run {number} of {runs}")
        results.append(run(args))
    path = RESULTS_DIR / TARGETS_LATEST
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    log(f"results saved to {path}")
    if not args.quick or args.write_docs:
        log(f"wrote the targets section of {page.write_targets(results, ROOT / 'docs')}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["variants"]:  # `scripts/bench variants`: only the variants, in their own section
        from bench import variants

        return variants.main(argv[1:])
    if argv[:1] == ["watch-scale"]:  # `scripts/bench watch-scale`: sockets held and what they cost
        from bench import watch_scale

        return watch_scale.main(argv[1:])
    if argv[:1] == ["sandbox"]:  # `scripts/bench sandbox`: parsing in sandbox processes, before and after
        from bench import sandbox

        return sandbox.main(argv[1:])
    if argv[:1] == ["chat-files"]:  # `scripts/bench chat-files`: a chat's GET with 50 linked files and with none
        from bench import chat_files

        return chat_files.main(argv[1:])
    if argv[:1] == ["quota"]:  # `scripts/bench quota`: the usage counter and the quota's cost per upload
        from bench import quota

        return quota.main(argv[1:])
    if argv[:1] == ["attachments"]:  # `scripts/bench attachments`: a 10 MiB text, JSON, PDF check vs reading it
        from bench import attachments

        return attachments.main(argv[1:])
    if argv[:1] == ["targets"]:  # `scripts/bench targets [--runs N]`: the targets' figures, medians of N runs
        return run_targets(argv[1:])
    args = parse_args(argv)
    if args.render:
        write_docs(json.loads(Path(args.render).read_text()))
        return 0
    results = run(args)
    postgres = args.database == "postgres"
    latest = None if args.watch_only else POSTGRES_LATEST if postgres else "results-latest.json"
    log(f"results saved to {save(results, latest)} ({results['meta']['elapsed_s']:.0f} s)")
    complete = complete_run(args)
    if args.watch_only:
        log(f"wrote the watch section of {page.write_watch(results, ROOT / 'docs')}")
    elif postgres and (complete or args.write_docs):
        log(f"wrote the PostgreSQL section of "
            f"{page.write_postgres(results, ROOT / 'docs', saved('results-latest.json'))}")
    elif complete or args.write_docs:
        write_docs(results)
    else:
        log("partial or quick run: docs/ left alone (use --write-docs to write it anyway)")
    if complete and not postgres:
        from bench import variants

        log(f"wrote {variants.write(variants.run(log), ROOT / 'docs')}")
        from bench import sandbox

        log(f"wrote {sandbox.write(sandbox.run(log=log), ROOT / 'docs')}")
        from bench import attachments

        log(f"wrote {attachments.write(attachments.run(log=log), ROOT / 'docs')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
