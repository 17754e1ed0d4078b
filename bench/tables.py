"""The measurements' sections of docs/PERFORMANCE.md, in Markdown: setup, overhead, grid, CPU, conditional GET,
verify, memory, git watch, and PostgreSQL beside SQLite. The targets' tables are bench/targets.py's."""

import math

from bench.markdown import fmt, table
from bench.results import cells, conditional_speedups, not_modified_overhead, per_request, ratio
from bench.targets import (
    DOWNLOAD_OVERHEAD_MS,
    RATIO_MIN_BYTES,
    earlier_targets,
    overhead_targets,
    ratio_target,
    upload_overhead_allowance,
)

WATCH_HEADING = "## Git watch (WebSocket)"
SYSTEMS = ("service", "passthrough", "boto3")
SHORT = {"service": "svc", "passthrough": "pass", "boto3": "boto3"}
DIRECTIONS = ("upload", "download")


def render(results, image_names):
    """The generated part of the page: provenance, setup, targets, then every section the run measured."""
    meta = results["meta"]
    parts = [
        f"Generated {meta['finished_at']} by `scripts/bench` in {meta['elapsed_s']:.0f} s "
        f"(`{meta['command']}`" + ("; seconds per part: " + ", ".join(
            f"{name} {seconds:.0f}" for name, seconds in meta["section_seconds"].items())
            if meta.get("section_seconds") else "") + ").",
        "",
        _setup(meta),
        overhead_targets(results),
        earlier_targets(results),
    ]
    for section in (_overhead, _grid, _cpu, _conditional, _verify, _memory, watch_section):
        text = section(results, image_names)
        if text:
            parts.append(text)
    return "\n".join(parts)


def _pictures(image_names, names):
    """The lines that show the plots ``names`` that were drawn."""
    return [line for name in names if name in image_names for line in (f"![{name}]({image_names[name]})", "")]


def _setup(meta):
    return "\n".join([
        "## Setup",
        "",
        f"- Machine: {meta['cpus']} CPUs ({meta['cpu_model']}), {meta['memory_gib']:.0f} GiB, Python {meta['python']}, "
        f"Linux {meta['kernel']}.",
        f"- Service and passthrough: `gunicorn -c gunicorn.conf.py` (Procfile settings: {meta['gunicorn']}), "
        "bound to 127.0.0.1.",
        f"- Database: {meta['database']}. Storage: moto's S3 server (`harness/servers.py` MotoServer, one process, "
        "in memory) on 127.0.0.1 — the same endpoint for all three systems.",
        f"- Images: {meta['content_type']} made with Pillow (gradient + noise, "
        f"about {meta['bytes_per_pixel']} bytes per pixel, like a photo): "
        + ", ".join(f"{label} = {size:,} B" for label, size in meta["sizes"].items()) + ".",
        f"- Each cell: {meta['duration_s']} s closed loop in {meta.get('rounds', 1)} rounds interleaved with the other "
        f"systems' rounds (one round from 4 MB: those requests take seconds; at most {meta['max_requests']} "
        "requests); the requests in flight at the end finish and count. Before the grid, waves of 24 concurrent small "
        "requests warm the servers' threads up (each builds its S3 client on first use); each round opens fresh "
        "connections with one untimed health check; client = one thread per connection with `http.client` keep-alive "
        "(boto3 for the storage floor).",
        "- **Caveat: 2 cores for everything.** Client, gunicorn workers and moto share them, so every figure is "
        "CPU-bound and the three systems compete with their own load generator. The CPU table shows who used "
        "the cores; client CPU near 100% of one core would mean the client limits the cell.",
        f"- Load average before/after the run: {meta.get('load_before')} / {meta.get('load_after')} "
        "(other work on the machine competes for the same cores; see \"others %\" in the CPU table).",
        "- Ratio = service req/s ÷ passthrough req/s in the same cell (same bytes, same gunicorn settings, same "
        "S3). Bold = below target (0.8 upload, 0.9 download at 100 KB and up). MB = 10^6 bytes.",
        "",
    ])


# -- overhead -------------------------------------------------------------------


def _overhead(results, image_names):
    rows = results.get("overhead", [])
    if not rows:
        return ""
    return "\n".join([
        "## Overhead: the service's CPU beyond its floors", "",
        "Server CPU ms per request (all threads of the gunicorn master and workers, from "
        "`/proc/<pid>/task/*/schedstat`), one client, the service and passthrough cells interleaved in three rounds; "
        "each overhead is the median of the three rounds' differences. *Image work* is the upload's decode and "
        "variants (`variants.verify_and_make`, the one call the upload view makes with Pillow): *in the worker* = the "
        "thread CPU the workers measured around that call during the same uploads "
        "(`chatfiles_upload_image_cpu_seconds_total`, read between rounds from the metrics files); *here* = the same "
        "call on the same file in the benchmark process, servers idle, median of 3–7 runs. "
        "Upload overhead = service − passthrough − image work in the worker, per round; download overhead = "
        "service − passthrough. *Variant puts* = boto3's CPU for putting the upload's stored variants (the "
        "thumbnail, and the preview unless the original serves as it) to the same moto, timed in the benchmark "
        "process: objects the passthrough does not write, so a floor inside the upload overhead. *Spool* = the "
        "CPU of taking the same body in as the upload view does (`web.bodies.SpooledBody`: its SHA-256, which the "
        "contract makes the ETag, and the temporary file that keeps a slow client's body out of memory), timed "
        "in the benchmark process: a floor too. *Beyond floors* = upload overhead − variant puts − spool. "
        "*Thumbnail overhead*: the same as the download's for a variant, the service's `/thumbnail` against the "
        "same object through the passthrough. Bold = over target.", "",
        table(["type", "size", "image work here", "image work in the worker", "upload svc", "upload pass",
               "upload overhead", "allowed", "variant puts", "spool", "beyond floors", "download svc",
               "download pass", "download overhead", "thumbnail overhead"], [_overhead_row(row) for row in rows]), "",
    ])


def _overhead_row(row):
    allowed = upload_overhead_allowance(row["bytes"])
    return [row["content_type"], row["size_label"], fmt(row.get("image_work_bench_ms"), 2),
            fmt(row["image_work_ms"], 2), fmt(row["upload_service_ms"], 2),
            fmt(row["upload_passthrough_ms"], 2), _overhead_cell(row["upload_overhead_ms"], allowed),
            fmt(allowed, 2), fmt(row.get("variant_puts_ms"), 2),
            fmt(row.get("spool_ms"), 2), fmt(row.get("upload_overhead_beyond_floors_ms"), 2),
            fmt(row["download_service_ms"], 2),
            fmt(row["download_passthrough_ms"], 2), _overhead_cell(row["download_overhead_ms"], DOWNLOAD_OVERHEAD_MS),
            _overhead_cell(row.get("thumbnail_overhead_ms"), DOWNLOAD_OVERHEAD_MS)]


def _overhead_cell(value, allowed):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"**{value:.2f}**" if value > allowed else f"{value:.2f}"


# -- the grid and its CPU -----------------------------------------------------------


def _grid(results, image_names):
    grid = cells(results)
    if not grid:
        return ""
    meta = results["meta"]
    out = ["## Throughput and latency, side by side", "", *_pictures(image_names, ("throughput", "ratio"))]
    header = ["size", "c", *(f"{SHORT[system]} {figure}" for system in SYSTEMS
                             for figure in ("req/s", "MB/s", "p50 ms", "p99 ms")), "svc/pass"]
    for direction in DIRECTIONS:
        rows = [_grid_row(grid, meta, direction, label, c) for label in meta["sizes"] for c in meta["concurrencies"]]
        out += [f"### {direction.capitalize()}s", "", table(header, rows), ""]
    return "\n".join(out + _grid_errors(grid) + _grid_samples(grid, meta))


def _grid_row(grid, meta, direction, label, c):
    row = [label, c]
    for system in SYSTEMS:
        cell = grid.get((system, direction, label, c))
        row += (["–"] * 4 if cell is None else
                [fmt(cell["rate"]), fmt(cell["mb_per_second"]), fmt(cell["p50_ms"]), fmt(cell["p99_ms"])])
    value = ratio(grid, direction, label, c)
    row.append(_ratio_cell(value, ratio_target(direction)) if meta["sizes"][label] >= RATIO_MIN_BYTES
               else fmt(value, 2))
    return row


def _ratio_cell(value, target):
    if math.isnan(value):
        return "–"
    return f"**{value:.2f}**" if value < target else f"{value:.2f}"


def _grid_errors(grid):
    errors = [cell for cell in grid.values() if cell["errors"]]
    if not errors:
        return []
    return ["Errors: " + "; ".join(f"{c['system']} {c['direction']} {c['size_label']} c={c['concurrency']}: "
                                   f"{c['errors']} ({c['first_error'][:120]})" for c in errors), ""]


def _grid_samples(grid, meta):
    header = ["size", "c"] + [f"n {SHORT[system]} {direction[:2]}" for direction in DIRECTIONS for system in SYSTEMS]
    rows = [[label, c] + [grid.get((system, direction, label, c), {}).get("requests", "–")
                          for direction in DIRECTIONS for system in SYSTEMS]
            for label in meta["sizes"] for c in meta["concurrencies"]]
    return ["Samples per cell (n) and p99: with few requests (8 MB cells) p99 is close to the maximum.", "",
            table(header, rows), ""]


def _cpu(results, image_names):
    grid = cells(results)
    if not grid:
        return ""
    meta = results["meta"]
    out = ["## Where the CPU went", "",
           "CPU milliseconds per request of the gunicorn processes (service or passthrough) and of moto, and the "
           "client's CPU as a share of one core over the cell. The difference service − passthrough is the "
           "service's own work per request; the 2 cores are the budget all of it shares. \"others\" is the CPU "
           "that processes outside the benchmark used meanwhile, as a share of both cores: where it is high, "
           "throughput figures are depressed, CPU per request much less so.", ""]
    header = ["direction", "size", "c", "svc ms/req", "pass ms/req", "svc − pass", "moto ms/req (svc)",
              "moto ms/req (pass)", "client % (svc)", "client % (pass)", "client % (boto3)", "others % (svc)"]
    rows = []
    for direction in DIRECTIONS:
        for label in meta["sizes"]:
            for c in meta["concurrencies"]:
                svc, pas, bot = (grid.get((system, direction, label, c)) for system in SYSTEMS)
                if svc and pas:
                    rows.append(_cpu_row(direction, label, c, svc, pas, bot, meta["cpus"]))
    return "\n".join(out + [table(header, rows), ""])


def _cpu_row(direction, label, c, svc, pas, bot, cpus):
    svc_ms, pas_ms = per_request(svc, "server_cpu"), per_request(pas, "server_cpu")
    return [direction, label, c, fmt(svc_ms), fmt(pas_ms), fmt(svc_ms - pas_ms),
            fmt(per_request(svc, "storage_cpu")), fmt(per_request(pas, "storage_cpu")),
            fmt(_share(svc)), fmt(_share(pas)), fmt(_share(bot) if bot else None), fmt(_others_share(svc, cpus))]


def _others_share(cell, cpus):
    """CPU other processes on the machine used during the cell, as % of all cores."""
    if "machine_cpu" not in cell or not cell["seconds"]:
        return float("nan")
    ours = cell["client_cpu"] + cell["server_cpu"] + cell["storage_cpu"]
    return 100 * max(0.0, cell["machine_cpu"] - ours) / (cell["seconds"] * cpus)


def _share(cell):
    return 100 * cell["client_cpu"] / cell["seconds"] if cell["seconds"] else float("nan")


# -- conditional GET, verify, memory ----------------------------------------------------


def _conditional(results, image_names):
    rows = results.get("conditional", [])
    if not rows:
        return ""
    by_key = {(row["status"], row["concurrency"]): row for row in rows}
    speedups = conditional_speedups(results)
    return "\n".join([
        f"## Conditional GET (304) against plain GET (200), {results['conditional_size_label']} image", "",
        "\"bare\" is bench/bare.py, a WSGI app that answers every request with a hand-built 304, under the same "
        "gunicorn settings, measured in the same rounds; 304 overhead = the service's 304 CPU − the bare one's. "
        "\"Flask\" is bench/bare_flask.py, the same 304 from a one-route Flask app (no middleware, token, database "
        "or log line): Flask's own floor. \"contract\" is bench/contract_304.py, a one-route Flask app doing only "
        "what the contract asks of a 304, with the service's own token check and row lookup on the service's "
        "database: the least a correct 304 costs in Flask. The service's 304 overhead splits into Flask's floor "
        "(Flask − bare), the contract's work (contract − Flask) and what the service adds to every request: the "
        "request log line, metrics, request id, body and cross-origin middleware (service − contract).", "",
        table(["c", "200 req/s", "200 p50 ms", "304 req/s", "304 p50 ms", "304 p99 ms", "304 ÷ 200",
               "304 server CPU ms/req", "bare CPU ms/req", "Flask CPU ms/req", "contract CPU ms/req",
               "304 overhead ms", "of it Flask's floor", "of it the contract's work", "of it the service's additions"],
              [_conditional_row(results, by_key, speedups, c) for c in sorted({row["concurrency"] for row in rows})]),
        "",
    ])


def _conditional_row(results, by_key, speedups, c):
    plain, conditional = by_key.get(("200", c)), by_key.get(("304", c))
    floors = [by_key.get((name, c)) for name in ("bare", "flask", "contract")]
    return [c, fmt(plain["rate"]), fmt(plain["p50_ms"]), fmt(conditional["rate"]),
            fmt(conditional["p50_ms"]), fmt(conditional["p99_ms"]), f"{speedups.get(c, float('nan')):.1f}×",
            fmt(per_request(conditional, "server_cpu"), 2),
            *(fmt(per_request(floor, "server_cpu"), 2) if floor else "–" for floor in floors),
            fmt(not_modified_overhead(results).get(c), 2),
            fmt(not_modified_overhead(results, of="flask").get(c), 2),
            fmt(not_modified_overhead(results, of="contract", above="flask").get(c), 2),
            fmt(not_modified_overhead(results, above="contract").get(c), 2)]


def _verify(results, image_names):
    rows = results.get("verify", [])
    if not rows:
        return ""
    figures = [[row["content_type"], row["size_label"], fmt(row["bytes"], 0), f"{row['pixels'] / 1e6:.2f}",
                fmt(row["ms"], 2), fmt(row["bytes"] / row["ms"] / 1000 if row["ms"] else None),
                fmt(row["pixels"] / row["ms"] / 1000 if row["ms"] else None)] for row in rows]
    return "\n".join([
        "## Verifying an image with Pillow (`images.verify_image`)", "",
        "`bench.overhead.image_work` (the upload's image work) in the benchmark process, servers idle: median "
        "thread CPU of 3–7 runs. Decoding every pixel is the point of the check, so its cost follows the pixel "
        "count more than the byte count. The overhead section shows these beside the workers' own figure.", "",
        table(["type", "size", "bytes", "Mpx", "ms", "MB/s", "Mpx/s"], figures), "",
    ])


def _memory(results, image_names):
    rows = results.get("memory", [])
    if not rows:
        return ""
    figures = [[row["direction"], row["content_type"], f"{row['image_bytes'] / 2**20:.2f}",
                f"{row['pixels'] / 1e6:.1f}", f"{row['baseline_kib'] / 1024:.0f}", f"{row['peak_kib'] / 1024:.0f}",
                f"+{row['growth_mib']:.0f}", f"{row['after_kib'] / 1024:.0f}", len(row["errors"]) or ""]
               for row in rows]
    return "\n".join([
        "## Memory of one worker (WEB_CONCURRENCY=1)", "",
        "8 clients at once, 3 rounds each, released together by a barrier; a fresh single-worker service per "
        "image type. Baseline = the worker's RSS after a warm-up of two waves of 16 concurrent small uploads and "
        "downloads (threads and their S3 clients exist); peak = VmHWM after resetting it (clear_refs), "
        "cross-checked by sampling VmRSS every 5 ms. The download baseline is what the uploads left behind "
        "(the allocator keeps freed memory). How many decodes overlap varies, so the upload peak varies by "
        "±30% between runs. Target for uploads: peak ≤ baseline + 30 MiB (JPEG), + 48 MiB (PNG, WebP, GIF).", "",
        table(["direction", "type", "image MiB", "Mpx", "baseline MiB", "peak MiB", "growth MiB",
               "after MiB", "errors"], figures), "",
        *_pictures(image_names, ("memory",)),
    ])


# -- git watch ----------------------------------------------------------------------


def watch_section(results, image_names):
    """The git watch's section (latency, large workspaces, idle sockets), or "" when the run did not watch."""
    watch = results.get("watch")
    if not watch:
        return ""
    out = [WATCH_HEADING, ""]
    if not watch.get("available"):
        return "\n".join(out + [f"**Not available**: {watch.get('reason', '')}", ""])
    out += _watch_latency(watch["latency"])
    if watch.get("scale"):
        out += _watch_scale(watch["scale"])
    if watch.get("idle"):
        out += _watch_idle(watch["idle"])
    return "\n".join(out)


def _watch_latency(latency):
    rows = [[row["changed_files"], row["rounds"], row["lost"], fmt(row["first_message_s"], 2), row["p50_ms"],
             row["p95_ms"], row["max_ms"], fmt(row["message_bytes"], 0)] for row in latency]
    return [
        "Single-worker service. Each workspace is one repository with N modified files; each round rewrites one "
        "file with a new marker and times from just before the write to the arrival of the first `changes` "
        "message whose diff contains it. Rounds are 0.3–0.7 s apart (random phase against the server's loop).", "",
        table(["changed files", "rounds", "lost", "first message s", "p50 ms", "p95 ms", "max ms",
               "message bytes"], rows), "",
    ]


def _watch_scale(scale):
    rows = [[row["label"], f"{row['reported']}{' (truncated)' if row['truncated'] else ''}",
             fmt(row["first_message_s"], 2), fmt(row["scan_s"], 2),
             f"{100 * row['idle_cpu_per_socket']:.2f}%", f"{100 * row['busy_cpu_per_socket']:.2f}%"]
            for row in scale]
    window = scale[0]["window_s"]
    side_by_side = (f"Each workspace is on a single-worker service of its own, set up and timed one after "
                    f"another; their CPU windows run side by side ({scale[0]['side_by_side']} workers at once). "
                    if scale[0].get("side_by_side") else "")
    return [
        "### Large workspaces", "",
        f"{scale[0]['sockets']} sockets on each workspace (one user); repositories have one modified file each. "
        "*Scan* is the time from a `refresh` to its answer (a fresh scan, shared by the sockets). CPU is the "
        f"worker's over {window:g} s divided by the sockets: idle (the 10 s safety rescan only) and with one "
        f"write a second. {side_by_side}At most 64 repositories are read (the contract's ceiling); 30,000 "
        "untracked files give the size note, known from the file list without reading the files.", "",
        table(["workspace", "repositories reported", "first message s", "scan s", "CPU/socket idle",
               "CPU/socket, 1 write/s"], rows), "",
    ]


def _watch_idle(idle):
    return [
        f"Idle sockets: worker CPU (the watch starts no process: libgit2 runs inside it) over {idle['seconds']} s: "
        f"{100 * idle['no_socket']:.2f}% of a core with no socket, {100 * idle['one_socket']:.2f}% with one, "
        f"{100 * idle['many_sockets']:.2f}% with {idle['many']}: **{100 * idle['per_socket']:.3f}% of a core "
        "per idle socket**.", "",
    ]


# -- PostgreSQL beside SQLite -----------------------------------------------------------


def render_postgres(postgres, sqlite):
    """The same grid on PostgreSQL, each figure beside SQLite's (``sqlite`` may be None)."""
    meta = postgres["meta"]
    sqlite = sqlite or {}
    sqlite_meta = sqlite.get("meta", {})
    out = ["## PostgreSQL beside SQLite", "",
           f"PostgreSQL: generated {meta['finished_at']} by `{meta['command']}` in {meta['elapsed_s']:.0f} s "
           f"(load average before/after {meta.get('load_before')} / {meta.get('load_after')}). "
           + (f"SQLite: the run of {sqlite_meta['finished_at']} above." if sqlite_meta else "No SQLite run to compare.")
           + " Server CPU ms per request of the gunicorn processes; a throw-away PostgreSQL on 127.0.0.1 with the "
             "service's pool. SQLite runs inside the workers, so its work is in their CPU; PostgreSQL's server "
             "processes are not counted (only the client side, psycopg, is).", ""]
    out += _postgres_overhead(postgres, sqlite) + _postgres_304(postgres, sqlite) + _postgres_grid(postgres, sqlite)
    return "\n".join(out)


def _postgres_overhead(postgres, sqlite):
    sqlite_overhead = {(row["content_type"], row["size_label"]): row for row in sqlite.get("overhead", [])}
    rows = []
    for row in postgres.get("overhead", []):
        other = sqlite_overhead.get((row["content_type"], row["size_label"]), {})
        rows.append([row["content_type"], row["size_label"],
                     fmt(other.get("upload_overhead_ms"), 2), fmt(row["upload_overhead_ms"], 2),
                     fmt(other.get("download_overhead_ms"), 2), fmt(row["download_overhead_ms"], 2),
                     fmt(other.get("thumbnail_overhead_ms"), 2), fmt(row.get("thumbnail_overhead_ms"), 2)])
    if not rows:
        return []
    return ["### Overhead", "", table(["type", "size", "upload overhead SQLite", "upload overhead PostgreSQL",
                                       "download overhead SQLite", "download overhead PostgreSQL",
                                       "thumbnail overhead SQLite", "thumbnail overhead PostgreSQL"], rows), ""]


def _postgres_304(postgres, sqlite):
    out = []
    for label, of in (("304 over a bare request", "304"), ("the contract's minimum 304 over a bare request", "contract")):
        pg_304, sq_304 = not_modified_overhead(postgres, of=of), not_modified_overhead(sqlite, of=of)
        if pg_304:
            out += [f"{label}: " + "; ".join(f"c={c}: SQLite {fmt(sq_304.get(c), 2)} ms, PostgreSQL {value:.2f} ms"
                                             for c, value in sorted(pg_304.items())), ""]
    return out


def _postgres_grid(postgres, sqlite):
    pg_cells, sq_cells = cells(postgres), cells(sqlite)
    rows = []
    for (system, direction, label, c), cell in pg_cells.items():
        if system != "service":
            continue
        other = sq_cells.get((system, direction, label, c))
        passthrough = pg_cells.get(("passthrough", direction, label, c))
        rows.append([direction, label, c, fmt(per_request(other, "server_cpu") if other else None, 2),
                     fmt(per_request(cell, "server_cpu"), 2),
                     fmt(per_request(passthrough, "server_cpu") if passthrough else None, 2),
                     fmt(other["rate"] if other else None), fmt(cell["rate"])])
    if not rows:
        return []
    return ["### Grid", "", table(["direction", "size", "c", "svc CPU ms SQLite", "svc CPU ms PostgreSQL",
                                   "pass CPU ms (PostgreSQL run)", "svc req/s SQLite", "svc req/s PostgreSQL"],
                                  rows), ""]
