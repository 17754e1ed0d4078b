"""The targets the benchmark judges, their allowances, and their tables in docs/PERFORMANCE.md.

Issue 5: the service's throughput against the passthrough's, 304 against
200, the git watch's p95. Issue 11: the service costs nothing but the image
work (CPU ms per request beyond the floors, worker RSS under uploads),
judged on one run or, by ``scripts/bench targets``, on the medians of several.
"""

import math
from statistics import median

from bench.markdown import fmt, table
from bench.results import cells, conditional_speedups, not_modified_overhead, ratio

TARGETS = {"upload_ratio": 0.8, "download_ratio": 0.9, "conditional_speedup": 3.0, "upload_rss_images": 3,
           "watch_p95_ms": 1000}
# Issue 11: what the service may cost beyond its floors, in CPU ms per request.
UPLOAD_OVERHEAD_MS = (1.0, 0.5)  # fixed + per MB (10^6 bytes)
DOWNLOAD_OVERHEAD_MS = 0.5
NOT_MODIFIED_OVERHEAD_MS = 0.5
UPLOAD_RSS_MIB = {"image/jpeg": 30}  # worker peak over baseline under 8 x 10 MiB uploads
UPLOAD_RSS_MIB_OTHERS = 48
RATIO_MIN_BYTES = 100_000  # the ratio targets apply at 100 KB and above


def upload_overhead_allowance(size_bytes):
    fixed, per_mb = UPLOAD_OVERHEAD_MS
    return fixed + per_mb * size_bytes / 1e6


def upload_rss_allowance(content_type):
    return UPLOAD_RSS_MIB.get(content_type, UPLOAD_RSS_MIB_OTHERS)


def ratio_target(direction):
    return TARGETS["upload_ratio" if direction == "upload" else "download_ratio"]


def verdict(ok):
    return "yes" if ok else "**no**"


# -- issue 5, on one run ----------------------------------------------------------


def earlier_targets(results):
    """The issue-5 targets' table."""
    rows = [*_ratio_rows(results), *_speedup_rows(results), *_watch_rows(results)]
    return "## Earlier targets (issue 5)\n\n" + table(["target", "wanted", "measured", "met"], rows) + "\n"


def _ratio_rows(results):
    rows = []
    grid = cells(results)
    labels = [label for label, size in results["meta"]["sizes"].items() if size >= RATIO_MIN_BYTES]
    concurrencies = results["meta"]["concurrencies"]
    for direction, key in (("upload", "upload_ratio"), ("download", "download_ratio")):
        values = [ratio(grid, direction, label, c) for label in labels for c in concurrencies]
        values = [value for value in values if not math.isnan(value)]
        if values:
            worst = min(values)
            rows.append([f"service/passthrough, {direction}s ≥ 100 KB", f"≥ {TARGETS[key]}",
                         f"min {worst:.2f} (max {max(values):.2f})", verdict(worst >= TARGETS[key])])
    return rows


def _speedup_rows(results):
    speedups = conditional_speedups(results)
    if not speedups:
        return []
    worst = min(speedups.values())
    return [[f"304 vs 200 at {results['conditional_size_label']}", f"≥ {TARGETS['conditional_speedup']}×",
             ", ".join(f"c={c}: {value:.1f}×" for c, value in speedups.items()),
             verdict(worst >= TARGETS["conditional_speedup"])]]


def _watch_rows(results):
    watch = results.get("watch")
    what, wanted = "git watch p95, 100 changed files", f"≤ {TARGETS['watch_p95_ms']} ms"
    if watch and watch.get("available"):
        return [[what, wanted, f"{entry['p95_ms']} ms", verdict(entry["p95_ms"] <= TARGETS["watch_p95_ms"])]
                for entry in watch["latency"] if entry["changed_files"] == 100]
    if watch:
        return [[what, wanted, "not available", "–"]]
    return []


# -- issue 11, on one run ----------------------------------------------------------


def overhead_targets(results):
    """The issue-11 targets' table, or "" when the run measured none of their figures."""
    overhead = results.get("overhead", [])
    rows = [*_upload_overhead_rows(overhead), *_download_overhead_rows(overhead), *_not_modified_rows(results),
            *_upload_rss_rows(results)]
    if not rows:
        return ""
    return ("## Targets (issue 11: the service costs nothing but the image work)\n\n"
            "CPU milliseconds per request of the gunicorn processes, from the overhead and conditional sections "
            "below.\n\n" + table(["target", "wanted", "measured (ms)", "met"], rows) + "\n")


def _upload_overhead_rows(overhead):
    rows = []
    for content_type in dict.fromkeys(row["content_type"] for row in overhead):
        mine = [row for row in overhead if row["content_type"] == content_type]
        excess = [row["upload_overhead_ms"] - upload_overhead_allowance(row["bytes"]) for row in mine]
        rows.append([f"upload overhead, {content_type}", "≤ 1 ms + 0.5 ms/MB",
                     ", ".join(f"{row['size_label']}: {row['upload_overhead_ms']:.2f}" for row in mine),
                     verdict(max(excess) <= 0)])
    return rows


def _download_overhead_rows(overhead):
    rows = []
    for key, what in (("download_overhead_ms", "download"), ("thumbnail_overhead_ms", "variant (thumbnail)")):
        values = [row[key] for row in overhead if key in row]
        if values:
            rows.append([f"{what} overhead, every type and size", f"≤ {DOWNLOAD_OVERHEAD_MS} ms",
                         f"max {max(values):.2f} ms (median {median(values):.2f})",
                         verdict(max(values) <= DOWNLOAD_OVERHEAD_MS)])
    return rows


def _not_modified_rows(results):
    not_modified = not_modified_overhead(results)
    if not not_modified:
        return []
    return [["304 over a bare request", f"≤ {NOT_MODIFIED_OVERHEAD_MS} ms",
             ", ".join(f"c={c}: {value:.2f} ms" for c, value in sorted(not_modified.items())),
             verdict(max(not_modified.values()) <= NOT_MODIFIED_OVERHEAD_MS)]]


def _upload_rss_rows(results):
    rows = []
    for memory in results.get("memory", []):
        if memory["direction"] == "upload":
            allowed = upload_rss_allowance(memory["content_type"])
            rows.append([f"worker RSS, 8 × {memory['image_bytes'] / 2**20:.1f} MiB {memory['content_type']} uploads",
                         f"≤ baseline + {allowed} MiB", f"+{memory['growth_mib']:.0f} MiB",
                         verdict(memory["growth_mib"] <= allowed)])
    return rows


# -- issue 11, medians of several runs (``scripts/bench targets``) ---------------------


def target_values(results):
    """One run's figures that the issue-11 targets judge: {(target, cell): value}, with each cell's allowance."""
    values = {}
    for row in results.get("overhead", []):
        cell = f"{row['content_type']} {row['size_label']}"
        values["upload overhead ms", cell] = (row["upload_overhead_ms"], upload_overhead_allowance(row["bytes"]))
        values["download overhead ms", cell] = (row["download_overhead_ms"], DOWNLOAD_OVERHEAD_MS)
        if "thumbnail_overhead_ms" in row:
            values["thumbnail download overhead ms", cell] = (row["thumbnail_overhead_ms"], DOWNLOAD_OVERHEAD_MS)
    for c, value in sorted(not_modified_overhead(results).items()):
        values["304 over a bare request, ms", f"c={c}"] = (value, NOT_MODIFIED_OVERHEAD_MS)
    for memory in results.get("memory", []):
        if memory["direction"] == "upload":
            values["worker RSS over baseline, 8 uploads at once, MiB", memory["content_type"]] = (
                memory["growth_mib"], upload_rss_allowance(memory["content_type"]))
    return values


def floor_values(results):
    """One run's figures beside the targets, not judged: the floors under them, and what is left above them."""
    values = {}
    for label, of in (("Flask's own 304 over a bare request, ms (bench/bare_flask.py)", "flask"),
                      ("the contract's minimum 304 over a bare request, ms (bench/contract_304.py)", "contract")):
        for c, value in sorted(not_modified_overhead(results, of=of).items()):
            values[label, f"c={c}"] = value
    for row in results.get("overhead", []):
        if "upload_overhead_beyond_floors_ms" in row:
            values["upload overhead beyond variant puts and spool, ms",
                   f"{row['content_type']} {row['size_label']}"] = row["upload_overhead_beyond_floors_ms"]
    return values


def render_targets(runs):
    """The targets judged on the median of each figure over ``runs`` (a list of results)."""
    rows, met = _judged_rows(runs)
    floor_rows = _floor_rows(runs)
    run_columns = [f"run {number}" for number in range(1, len(runs) + 1)]
    starts = ", ".join(results["meta"]["finished_at"] for results in runs)
    loads = "; ".join(f"{results['meta'].get('load_before')} / {results['meta'].get('load_after')}"
                      for results in runs)
    return "\n".join([
        f"## Targets as medians of {len(runs)} runs (`scripts/bench targets`)", "",
        f"The conditional, overhead and memory sections run {len(runs)} times, each run on a freshly started stack "
        f"(finished {starts}; load average before / after: {loads}); every figure is judged on its median. "
        f"{met} of {len(rows)} figures meet their target.", "",
        table(["target", "cell", *run_columns, "median", "allowed", "met"], rows), "",
        *(["Beside the targets, from the same runs and not judged: the floors under the 304 target, and the "
           "upload overhead left above its own floors (see the Overhead section):", "",
           table(["floor", "cell", *run_columns, "median"], floor_rows), ""] if floor_rows else []),
    ])


def _judged_rows(runs):
    """A row per figure the targets judge (each run's value, the median, the allowance, met); how many met."""
    per_run = [target_values(results) for results in runs]
    rows, met = [], 0
    for key in dict.fromkeys(key for values in per_run for key in values):
        seen = [values[key][0] for values in per_run if key in values]
        allowed = next(values[key][1] for values in per_run if key in values)
        ok = median(seen) <= allowed
        met += ok
        rows.append([key[0], key[1], *(fmt(value, 2) for value in seen), fmt(median(seen), 2), fmt(allowed, 2),
                     verdict(ok)])
    return rows, met


def _floor_rows(runs):
    floors = [floor_values(results) for results in runs]
    return [[key[0], key[1], *(fmt(values.get(key), 2) for values in floors),
             fmt(median([values[key] for values in floors if key in values]), 2)]
            for key in dict.fromkeys(key for values in floors for key in values)]
