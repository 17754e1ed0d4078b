"""The watch-scale section of docs/PERFORMANCE.md and its plot, from saved results (``scripts/bench watch-scale``).

Before (thread per socket, bench/watch_scale_before.json, as recorded) and
after (the run's results) side by side, each figure beside its issue-17
target.
"""

import collections
import json
import statistics
from pathlib import Path

from bench import page

BEFORE = Path(__file__).resolve().parent / "watch_scale_before.json"
PLOT = "perf-watch-scale.png"
TARGETS = {"idle_cpu_percent": 5, "rss_per_socket_kib": 64, "latency_ratio": 1.5, "change_p95_ms": 1000,
           "archive_close_s": 1}
NONE = "—"
THREADS = {"ThreadPoolExecutor-0": "request threads", "MainThread": "gunicorn's loop"}  # readable names


def render(results, docs_dir=page.DOCS):
    before = json.loads(BEFORE.read_text())
    plot(before, results, docs_dir)
    return "\n".join([
        "### Watch sockets at scale", "",
        *how_measured(before, results), "",
        *targets_table(results), "",
        *capacity_table(before, results), "",
        *change_table(results), "",
        *edge_table(results), "",
        *queries_lines(results), "",
        f"![Idle CPU and memory against sockets, before and after]({PLOT})", "",
    ])


# --- text ------------------------------------------------------------------------------------


def how_measured(before, results):
    meta, edge = results["meta"], results["edge"]
    code = f"commit {meta['commit']}"
    if meta["uncommitted"]:
        code += f" with uncommitted changes to {', '.join(meta['uncommitted'])}"
    environment = ", ".join(f"{name}={value}" for name, value in meta["environment"].items()) or "none"
    return [
        f"**After** (hub: one event loop per worker): `scripts/bench watch-scale`, {meta['finished_at']}, "
        f"{code}; {meta['cpus']} × {meta['cpu_model']}, {meta['memory_gib']:.0f} GiB, Python {meta['python']}, "
        f"bench run {meta['elapsed_s'] / 60:.1f} min. The service as the Procfile starts it "
        f"(`gunicorn -c gunicorn.conf.py wsgi:app`: {meta['gunicorn']}), default settings (WATCH_MAX_PER_USER 16, "
        f"WATCH_PING_INTERVAL 25 s; service settings from the environment: {environment}), SQLite; open-files "
        f"limit {meta['fd_limit']:,} for the service (gunicorn.conf.py raises the soft limit to the hard one) and "
        f"the client (raises its own). {meta['users']:,} users, each with one chat on its own small repository "
        f"(one commit, one file; made in {meta['accounts_s']} s by one process calling `cli.create_user`); socket "
        f"*i* of a round belongs to user *i* mod min(sockets, {meta['users']:,}), so 10,000 sockets are 10 per user "
        f"on 1,000 workspaces, under the per-user cap. The client (bench/watch_client.py) holds every socket in "
        f"one asyncio process with wsproto, answers pings, and asks at most 256 upgrades at a time. Idle CPU: "
        f"every process of the service (master, workers, sandboxes) over {meta['idle_window_s']} s with nothing "
        f"changing (pings included); RSS per socket: the service's RSS with the sockets open minus the idle "
        f"service's, over the sockets held (so it also carries the workspaces' watches and scans). Requests: "
        f"{meta['requests']} uploads of a {meta['small_file_bytes']:,}-byte "
        f"PNG, each downloaded after, one at a time on a new connection, from a process of their own; medians.",
        "",
        f"**Before** (one gunicorn thread per socket): the figures recorded {before['meta']['finished_at']} on "
        f"commit {before['meta']['commit']}, same machine and settings, kept in bench/watch_scale_before.json. "
        f"Every socket of a round was on one user's one chat (its cap raised for that), the small file was a "
        f"{before['meta']['small_file_bytes']}-byte PNG ({before['meta']['requests']} requests a median), the idle "
        f"window {before['meta']['idle_window_s']} s.",
        "",
        f"Two instances (archive → closed, statements): PostgreSQL {edge['versions']['postgres']} and nginx "
        f"{edge['versions']['nginx']} with deploy/nginx.conf in front of two instances, each as above "
        f"(PROXY_HOPS=1), every socket through nginx (bench/watch_scale_edge.py).",
    ]


def targets_table(results):
    rounds, edge = results["rounds"], results["edge"]
    largest = max(rounds, key=lambda row: row["asked"])
    worst_cpu = max(rounds, key=lambda row: row["idle_cpu_percent"])
    worst_ratio = max(ratio(row, results["idle"]) or 0 for row in rounds)
    failures = sum(row["request_failures"] + row.get("none_open", {}).get("request_failures", 0) for row in rounds)
    changes = [row["change"] for row in rounds if row.get("change")]
    worst_p95 = max((change["p95_ms"] or float("inf") for change in changes), default=None)
    closes = [archive["close_s"] for archive in edge["archives"]]
    worst_close = max((s if s is not None else float("inf") for s in closes), default=None)
    sqlite, postgres = results["sqlite_queries"], edge["idle"]

    def judged(ok):
        return "yes" if ok else "**no**"

    return [
        "| issue-17 target | after | met |",
        "|---|---|---|",
        f"| sockets held at {largest['asked']:,} asked | {largest['held']:,} "
        f"| {judged(largest['held'] == largest['asked'])} |",
        f"| idle CPU ≤ {TARGETS['idle_cpu_percent']} % of a core | {worst_cpu['idle_cpu_percent']} % at "
        f"{worst_cpu['asked']:,} sockets (the worst round) "
        f"| {judged(worst_cpu['idle_cpu_percent'] <= TARGETS['idle_cpu_percent'])} |",
        f"| RSS ≤ {TARGETS['rss_per_socket_kib']} KiB per socket | {largest['rss_per_socket_kib']} KiB at "
        f"{largest['held']:,}{rss_context(rounds)} | "
        f"{judged(largest['rss_per_socket_kib'] <= TARGETS['rss_per_socket_kib'])} |",
        f"| 10 KB upload and download median ≤ {TARGETS['latency_ratio']} × with no socket open, none failed | "
        f"{worst_ratio:.2f} × at worst, {failures} failed | "
        f"{judged(worst_ratio <= TARGETS['latency_ratio'] and failures == 0)} |",
        f"| change latency p95 ≤ {TARGETS['change_p95_ms'] / 1000:g} s (1,000 workspaces) | "
        f"{fmt_ms(worst_p95)} at worst | {judged(worst_p95 is not None and worst_p95 <= TARGETS['change_p95_ms'])} |",
        f"| archive → every socket closed ≤ {TARGETS['archive_close_s']} s, two instances | "
        f"{fmt_s(worst_close)} at worst of {len(closes)} | "
        f"{judged(worst_close is not None and worst_close <= TARGETS['archive_close_s'])} |",
        f"| database work while idle does not grow with sockets | SQLite {sqlite['per_second']}/s with "
        f"{sqlite['sockets']:,} sockets; PostgreSQL {postgres['statements_per_second']}/s with "
        f"{postgres['sockets']:,} | {judged(postgres['statements'] == 0)} |",
    ]


def rss_context(rounds):
    """The next largest round's figure and the marginal cost between the two largest: what the largest hides."""
    if len(rounds) < 2:
        return ""
    smaller, largest = sorted(rounds, key=lambda row: row["asked"])[-2:]
    marginal = (largest["rss_mib"] - smaller["rss_mib"]) * 1024 / max(largest["held"] - smaller["held"], 1)
    return (f" ({smaller['rss_per_socket_kib']} at {smaller['held']:,}, one socket a workspace; each socket from "
            f"{smaller['held']:,} to {largest['held']:,} added {marginal:.1f})")


def capacity_table(before, results):
    lines = [
        "| sockets asked | | held | opened in, s | idle CPU, % of a core (≤ 5) | RSS, MiB | RSS per socket, KiB "
        "(≤ 64) | upload, ms | download, ms | × none open (≤ 1.5) | failed requests | archive call | "
        "sockets closed by it | archive → closed, s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        idle_row("before", before["idle"]),
        idle_row("after", results["idle"]),
    ]
    before_rounds = {row["asked"]: row for row in before["rounds"]}
    for row in results["rounds"]:
        if row["asked"] in before_rounds:
            lines.append(round_row("before", before_rounds[row["asked"]], before["idle"]))
        if "none_open" in row:
            lines.append(none_open_row(row))
        lines.append(round_row("after", row, results["idle"]))
    lines += ["", "Held: its first `changes` message came. A failed request got no answer (10 s) or an error; "
              "a measurement stops asking after 3 (`—`: none answered). × none open: the larger of the upload's "
              "and the download's median over its median with no socket open (after: measured just before the "
              "round's sockets opened, in the table as `none open`; before: the idle service's). The archive is "
              "user 0's chat (after: its 1 to 10 sockets; before: every socket of the round); before, past 128 "
              "sockets, the "
              "archive call itself got no answer and nothing closed within 40 s. RSS per socket at 1 and 100 "
              "sockets is mostly what the first socket starts once per worker (the hub's loop and threads, the "
              "archive listener, the inotify thread), spread over few sockets: the target is judged at the "
              "largest round."]
    by_thread = [f"{sockets(row['asked'])}: " + ", ".join(f"{THREADS.get(name, name)} {value}" for name, value in
                                                            row["idle_cpu_by_thread"].items())
                 for row in results["rounds"] if row.get("idle_cpu_by_thread")]
    if by_thread:
        lines += ["", "Idle CPU of the workers by thread (after, % of a core, both workers; threads named by "
                  "`py-spy dump`): " + "; ".join(by_thread) + "."]
    machine = [f"{sockets(row['asked'])} {row['idle_machine_cpu_percent']}" for row in results["rounds"]
               if "idle_machine_cpu_percent" in row]
    if machine:
        lines += ["", "The whole machine over the same idle windows (after, % of a core, the client and every "
                  f"other process included; nothing else ran if it stays near the service's): idle service "
                  f"{results['idle']['machine_cpu_percent']}; " + "; ".join(machine) + "."]
    return lines


def idle_row(label, idle):
    return (f"| 0 (idle service) | {label} | {NONE} | {NONE} | {idle['cpu_percent']} | {idle['rss_mib']} | {NONE} "
            f"| {fmt(idle['upload_ms'])} | {fmt(idle['download_ms'])} | {NONE} | {idle['request_failures']} | "
            f"{NONE} | {NONE} | {NONE} |")


def none_open_row(row):
    none = row["none_open"]
    return (f"| {row['asked']:,} | after, none open | {NONE} | {NONE} | {NONE} | {NONE} | {NONE} "
            f"| {fmt(none['upload_ms'])} | {fmt(none['download_ms'])} | {NONE} | {none['request_failures']} "
            f"| {NONE} | {NONE} | {NONE} |")


def round_row(label, row, idle):
    held_close = (f"{row['archive_closed']:,} of {row['archive_held']:,}")
    return (f"| {row['asked']:,} | {label} | {row['held']:,} | {fmt(row.get('open_s'))} | {row['idle_cpu_percent']} "
            f"| {fmt(row.get('rss_mib'))} | {row['rss_per_socket_kib']:,} | {fmt(row['upload_ms'])} "
            f"| {fmt(row['download_ms'])} | {fmt(ratio(row, idle), '{:.2f}')} | {row['request_failures']} "
            f"| {row['archive_status'] or 'no answer'} | {held_close} | {fmt(row['archive_close_s'], '{:.2f}')} |")


def change_table(results):
    lines = ["Change latency (after): 10 writes a second for 30 s, each into a random watched workspace (its "
             "tracked file rewritten with a new marker), timed from the write to the `changes` message carrying "
             "it on the last socket of that workspace; lost: not heard of 10 s after the last write.", "",
             f"| sockets | workspaces | writes | p50 | p95 (≤ {TARGETS['change_p95_ms'] / 1000:g} s) | max | lost |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["rounds"]:
        change = row.get("change")
        if change:
            lines.append(f"| {change['sockets']:,} | {change['workspaces']:,} | {change['writes']} "
                         f"| {fmt_ms(change['p50_ms'])} | {fmt_ms(change['p95_ms'])} | {fmt_ms(change['max_ms'])} "
                         f"| {change['lost']} |")
    return lines


def edge_table(results):
    edge = results["edge"]
    background, idle = edge["background"], edge["idle"]
    lines = [f"Two instances sharing PostgreSQL behind nginx (after): {background['held']:,} of "
             f"{background['asked']:,} background sockets held (8 each for 250 users), then "
             f"{len(edge['archives'])} chats with 16 sockets each, archived one after another through nginx. "
             f"Idle window, {idle['window_s']} s with {idle['sockets']:,} sockets open: {idle['statements']} "
             f"statements logged by PostgreSQL, the two instances' processes {idle['cpu_percent']} % of a core.", "",
             "| chats archived | their sockets on instance A / B | archive call | call, s (median) | closed "
             f"| archive → last close, median | max (≤ {TARGETS['archive_close_s']} s) |",
             "|---:|---|---|---:|---:|---:|---:|"]
    archives = edge["archives"]
    splits = collections.Counter(" / ".join(map(str, archive["per_instance"])) for archive in archives)
    statuses = collections.Counter(str(archive["status"] or "no answer") for archive in archives)
    closes = [archive["close_s"] for archive in archives]
    lines.append(f"| {len(archives)} | {', '.join(f'{split} ({n})' for split, n in splits.items())} "
                 f"| {', '.join(f'{status} ({n})' for status, n in statuses.items())} "
                 f"| {statistics.median(archive['call_s'] for archive in archives):.3f} "
                 f"| {sum(a['closed'] for a in archives)} of {sum(a['held'] for a in archives)} "
                 f"| {fmt_s(median_or_none(closes))} | {fmt_s(max_or_none(closes))} |")
    return lines


def median_or_none(values):
    """None when any is None (a chat whose sockets did not all close)."""
    return None if None in values or not values else statistics.median(values)


def max_or_none(values):
    return None if None in values or not values else max(values)


def queries_lines(results):
    sqlite, postgres = results["sqlite_queries"], results["edge"]["idle"]
    kinds = "; ".join(f"`{kind}`" for kind in sqlite["kinds"]) or "none"
    examples = "; ".join(f"`{example}`" for example in postgres["examples"]) or "none"
    return [
        "Database queries while idle (after), measured: SQLite "
        f"**{sqlite['per_second']}/s** with {sqlite['sockets']:,} sockets open ({sqlite['queries']} in "
        f"{sqlite['window_s']} s, counted in peewee's query log of a service started the same way at "
        f"LOG_LEVEL=DEBUG; queries: {kinds}). Not in that count, a design figure: each worker's archive poller "
        f"reads `PRAGMA data_version` every 0.5 s on a sqlite3 connection of its own (answered from memory; "
        f"gitwatch/archives.py) and asks which of its chats are archived only after a commit. "
        f"PostgreSQL **{postgres['statements_per_second']}/s** with {postgres['sockets']:,} sockets open over two "
        f"instances ({postgres['statements']} statements in the server's log in {postgres['window_s']} s; "
        f"examples: {examples}). Before: not measured.",
    ]


def ratio(row, idle):
    """The larger of upload's and download's median with the sockets over the same with none open (just before the
    round when measured then, else the idle service's)."""
    idle = row.get("none_open", idle)
    pairs = [(row[name], idle[name]) for name in ("upload_ms", "download_ms") if row[name] and idle[name]]
    if not pairs or len(pairs) < 2:
        return None
    return max(value / base for value, base in pairs)


def sockets(count):
    return f"{count:,} socket{'s' if count != 1 else ''}"


def fmt(value, pattern="{}"):
    return NONE if value is None else pattern.format(value)


def fmt_ms(value):
    if value is None or value == float("inf"):
        return NONE
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def fmt_s(value):
    return NONE if value is None or value == float("inf") else f"{value:.2f} s"


# --- plot -------------------------------------------------------------------------------------


def plot(before, results, docs_dir):
    """Idle CPU, RSS per socket and the service's RSS against the sockets asked for, before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    after = results["rounds"]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = (
        (axes[0], "idle_cpu_percent", "idle CPU, % of one core", TARGETS["idle_cpu_percent"]),
        (axes[1], "rss_per_socket_kib", "RSS per socket held, KiB", TARGETS["rss_per_socket_kib"]),
    )
    for axis, key, title, target in panels:
        axis.plot([row["asked"] for row in before["rounds"]], [row[key] for row in before["rounds"]], "s--",
                  color="tab:red", label="before (thread per socket; 128 held past 128)")
        axis.plot([row["asked"] for row in after], [row[key] for row in after], "o-", color="tab:blue",
                  label="after (event loop per worker)")
        axis.axhline(target, color="grey", linestyle=":", label=f"target ≤ {target}")
        axis.set_title(title)
    axes[1].set_yscale("log")
    total = axes[2]
    total.plot([row["asked"] for row in after], [row["rss_mib"] for row in after], "o-", color="tab:blue",
               label="after")
    total.plot([row["asked"] for row in before["rounds"]],
               [before["idle"]["rss_mib"] + row["held"] * row["rss_per_socket_kib"] / 1024 for row in before["rounds"]],
               "s--", color="tab:red", label="before (idle RSS + held × per socket; 128 held past 128)")
    total.set_title("service RSS (master, workers, sandboxes), MiB")
    counts = [row["asked"] for row in after]
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xticks(counts, [f"{count:,}" for count in counts])
        axis.minorticks_off()
        axis.set_xlabel("sockets asked")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(Path(docs_dir) / PLOT, dpi=90)
    plt.close(figure)
