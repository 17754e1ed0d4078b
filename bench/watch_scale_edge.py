"""Two instances on one PostgreSQL behind deploy/nginx.conf: archive → closed, and what idle sockets ask the database.

Part of ``scripts/bench watch-scale``. Both instances run the Procfile's
command with its defaults (PROXY_HOPS=1, as behind nginx) on one PostgreSQL
database whose statements are all logged (``log_statement = 'all'``, as
tests/test_live.py does). Every socket goes through nginx, which spreads
them over the two instances:

- background: 8 sockets each for 250 users (2,000);
- probes: 10 more users with 16 sockets each on their chat (16 is the
  per-user cap, so none is refused whichever instance nginx picks; each
  instance's ``chatfiles_watch_sockets_open`` tells how many it took);
- an idle window with all of them open: statements in the server's log, and
  the instances' CPU;
- then each probe's chat is archived through nginx, one after another: the
  time from the call to the last of its 16 close frames.
"""

import asyncio
import contextlib
import os
import subprocess
import time

import requests

from bench import procstat
from bench.watch_accounts import make_accounts
from bench.watch_client import archive_and_time, close_sockets, open_sockets, refusals
from harness.live import GunicornServer
from harness.servers import LOCALHOST, NginxServer, PostgresServer, find_nginx

DATABASE = "watch_scale"
BACKGROUND_USERS = 250
BACKGROUND_PER_USER = 8
PROBES = 10
PROBE_SOCKETS = 16  # the per-user cap: never refused, however nginx spreads them
FIRST_MESSAGE_WAIT = 60
SETTLE = 3
IDLE_WINDOW = 30
REQUEST_TIMEOUT = 10


def run(work, template, log=print):
    """The phase's results; every server it started is stopped before it returns."""
    postgres = PostgresServer(work / "postgres")
    instances, nginx = [], None
    try:
        postgres.start()
        url = postgres.create_database(DATABASE)
        log_every_statement(postgres)
        instances = start_instances(work, url)
        nginx = NginxServer([f"{LOCALHOST}:{instance.port}" for instance in instances]).start()
        accounts = make_accounts(instances[0], "edge", BACKGROUND_USERS + PROBES, template, work / "edge.json")
        results = asyncio.run(measure(postgres, instances, nginx, accounts, log))
        results["versions"] = versions(postgres)
        return results
    finally:
        if nginx is not None:
            nginx.close()
        for instance in instances:
            instance.stop()
        postgres.close()


def log_every_statement(postgres):
    with contextlib.closing(postgres.connect()) as admin:
        admin.autocommit = True
        admin.cursor().execute(f"ALTER DATABASE \"{DATABASE}\" SET log_statement = 'all'")


def start_instances(work, database_url):
    settings = {"DATABASE_URL": database_url, "LOCAL_STORAGE_ROOT": str(work / "edge-objects"),
                "WORKSPACES_ROOT": str(work / "edge-workspaces"), "PROXY_HOPS": 1}
    instances = []
    for name in ("a", "b"):
        (work / f"edge-{name}").mkdir()
        instances.append(GunicornServer(settings, work_dir=str(work / f"edge-{name}")).start())
    return instances


def versions(postgres):
    with contextlib.closing(postgres.connect()) as connection, connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        server_version = cursor.fetchone()[0].split()[0]
    nginx = subprocess.run([find_nginx(), "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    return {"postgres": server_version, "nginx": nginx}


def specs_for(account, index, count):
    return [(f"/api/v2/chats/{account['chat_id']}/git/watch", account["token"], index)] * count


async def measure(postgres, instances, nginx, accounts, log):
    loop = asyncio.get_running_loop()
    background, probes = accounts[:BACKGROUND_USERS], accounts[BACKGROUND_USERS:]
    specs = [spec for index, account in enumerate(background)
             for spec in specs_for(account, index, BACKGROUND_PER_USER)]
    sockets, tasks, open_s = await open_sockets(specs, LOCALHOST, nginx.port, FIRST_MESSAGE_WAIT)
    results = {"background": {"asked": len(specs), "held": sum(s.first.is_set() for s in sockets),
                              "open_s": round(open_s, 1), "refused": refusals(sockets)}}
    log(f"watch-scale edge: background {results['background']}")
    try:
        probe_sockets, splits = [], []
        for number, account in enumerate(probes):
            counts_before = await loop.run_in_executor(None, open_counts, instances)
            opened, opened_tasks, _ = await open_sockets(specs_for(account, number, PROBE_SOCKETS), LOCALHOST,
                                                         nginx.port, FIRST_MESSAGE_WAIT)
            tasks += opened_tasks
            probe_sockets.append(opened)
            counts_after = await loop.run_in_executor(None, open_counts, instances)
            splits.append([after - before for before, after in zip(counts_before, counts_after)])
        await asyncio.sleep(SETTLE)
        results["idle"] = await loop.run_in_executor(None, idle_window, postgres, instances)
        results["idle"]["sockets"] = sum(await loop.run_in_executor(None, open_counts, instances))
        log(f"watch-scale edge: idle {results['idle']}")
        results["archives"] = []
        for account, opened, split in zip(probes, probe_sockets, splits):
            archived = await archive_and_time(nginx.url, account, opened)
            results["archives"].append({**archived, "per_instance": split})
        log(f"watch-scale edge: archives {results['archives']}")
    finally:
        await close_sockets(tasks)
    return results


def open_counts(instances):
    """Each instance's ``chatfiles_watch_sockets_open`` (its own /metrics; nginx does not serve it)."""
    counts = []
    for instance in instances:
        text = requests.get(f"{instance.url}/metrics", timeout=REQUEST_TIMEOUT).text
        line = next(line for line in text.splitlines() if line.startswith("chatfiles_watch_sockets_open"))
        counts.append(int(float(line.split()[-1])))
    return counts


def idle_window(postgres, instances):
    """Statements the database logged and the instances' CPU over IDLE_WINDOW seconds of idle sockets."""
    pids = [pid for instance in instances for pid in procstat.tree_pids(instance.pid)]
    offset = os.path.getsize(postgres.log_path)
    cpu_before = procstat.total_cpu_seconds(pids)
    time.sleep(IDLE_WINDOW)
    cpu = procstat.total_cpu_seconds(pids) - cpu_before
    statements = statements_logged_since(postgres.log_path, offset)
    return {"window_s": IDLE_WINDOW, "statements": len(statements),
            "statements_per_second": round(len(statements) / IDLE_WINDOW, 2),
            "examples": sorted({line.split("statement:", 1)[1].strip()[:100] for line in statements})[:5],
            "cpu_percent": round(cpu / IDLE_WINDOW * 100, 2)}


def statements_logged_since(log_path, offset):
    with open(log_path, "rb") as log:
        log.seek(offset)
        return [line for line in log.read().decode(errors="replace").splitlines() if "statement:" in line]
