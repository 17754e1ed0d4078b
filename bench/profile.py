"""Profile the service's workers under one benchmark cell: ``python -m bench.profile``.

Starts the same loopback stack as the benchmark, warms it up, then runs one
cell (system, direction, size, concurrency) for a while under ``py-spy
record`` attached to every worker of that system, and prints the functions
that hold the most samples, by own time and including callees. py-spy is
pinned in requirements-bench.txt (scripts/bench installs it).

    python -m bench.profile --direction upload --size "1 MB" --concurrency 4
    python -m bench.profile --system passthrough --direction download --idle
"""

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.__main__ import CACHE_DIR, SIZES  # noqa: E402
from bench.grid import Grid  # noqa: E402
from bench.load import Cell  # noqa: E402
from bench.sample_images import cached_image  # noqa: E402
from bench.stack import Stack  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="service",
                        choices=("service", "passthrough", "bare", "flask", "contract"),
                        help="bare: bench/bare.py's 304, the floor of --direction conditional; "
                             "flask: bench/bare_flask.py's, Flask's own floor; "
                             "contract: bench/contract_304.py's, the least a correct 304 costs")
    parser.add_argument("--direction", default="upload", choices=("upload", "download", "conditional"))
    parser.add_argument("--size", default="1 MB", choices=list(SIZES))
    parser.add_argument("--format", default="image/jpeg")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--idle", action="store_true", help="also count threads that wait (locks, I/O)")
    parser.add_argument("--gil", action="store_true",
                        help="only samples holding the GIL: Python on the CPU (py-spy's own idle test counts "
                             "threads blocked in epoll as busy on this VM; C code that drops the GIL is left out)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "profiles"))
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        sys.exit("py-spy is not installed: run scripts/bench once (requirements-bench.txt pins it)")
    data = cached_image(CACHE_DIR, args.format, SIZES[args.size])
    work_dir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{args.system}-{args.direction}-{args.size.replace(' ', '')}-c{args.concurrency}{'-idle' if args.idle else ''}{'-gil' if args.gil else ''}"
    try:
        with Stack(work_dir) as stack:
            stack.start()
            grid = Grid(stack, args.format, args.seconds, 10**6, log=print)
            grid.warm_up(cached_image(CACHE_DIR, args.format, SIZES["10 KB"]))
            call, pids = _call(grid, args, data)
            server = getattr(stack, {"flask": "flask_floor", "contract": "contract_floor"}.get(args.system,
                                                                                                args.system))
            raw_files = []
            recorders = []
            for pid in server.worker_pids():
                raw = out_dir / f"{name}-{pid}.txt"
                raw_files.append(raw)
                command = [py_spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--format", "raw",
                           "--output", str(raw), "--duration", str(int(args.seconds)), "--nonblocking"]
                if args.idle:
                    command.append("--idle")
                if args.gil:
                    command.append("--gil")
                recorders.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            time.sleep(1)  # py-spy attaches
            cell = Cell(call, args.concurrency, pids, grid.moto_pids)
            try:
                result = cell.run(args.seconds - 1, 10**6)
            finally:
                cell.close()
            for recorder in recorders:
                recorder.wait(timeout=args.seconds + 30)
            print(f"{name}: {result.requests} requests, {result.rate:.1f}/s, server CPU "
                  f"{1000 * result.server_cpu / max(1, result.requests):.1f} ms/request")
            summarize([raw for raw in raw_files if raw.exists()], args.top)
            print(f"collapsed stacks: {', '.join(str(raw) for raw in raw_files)}")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _call(grid, args, data):
    if args.system in ("bare", "flask"):
        from bench.load import HttpCall

        port, pids = ((grid.stack.bare.port, grid.bare_pids) if args.system == "bare"
                      else (grid.stack.flask_floor.port, grid.flask_floor_pids))
        path = "/api/v2/chats/files/x"
        return HttpCall(port, "GET", path, status=304, expect_bytes=0, warm_path=path), pids
    if args.direction == "conditional" or args.system == "contract":
        file_id, etag = grid.seed_service_file(data)
        from bench.load import HttpCall

        headers = {"Coder-Session-Token": grid.downloader.token, "If-None-Match": etag}
        port, pids = ((grid.stack.contract_floor.port, grid.contract_floor_pids) if args.system == "contract"
                      else (grid.stack.service.port, grid.service_pids))
        return HttpCall(port, "GET", f"/api/v2/chats/files/{file_id}", headers, status=304, expect_bytes=0), pids
    seed = grid.seed(data)[args.system] if args.direction == "download" else None
    return grid._call(args.system, args.direction, data, seed)


def summarize(raw_files, top):
    """Print the top frames by own samples and by inclusive samples from py-spy's collapsed stacks."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for raw in raw_files:
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            count = int(count)
            frames = [_short(frame) for frame in stack.split(";")]
            frames = [frame for frame in frames if frame]
            total += count
            if frames:
                own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    if not total:
        print("no samples")
        return
    print(f"\n{total} samples. Own time:")
    for frame, count in own.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {frame}")
    print("\nIncluding callees:")
    for frame, count in inclusive.most_common(top):
        print(f"  {100 * count / total:5.1f}%  {frame}")


def _short(frame):
    """'func (path/to/file.py:12)' -> 'func (file.py)' so lines of one function add up; drop thread roots."""
    name, _, where = frame.partition(" (")
    path = where.split(":")[0]
    if "site-packages/" in path:
        path = path.split("site-packages/")[1]
    elif str(ROOT) in path:
        path = path.replace(str(ROOT) + "/", "")
    else:
        path = Path(path).name
    return f"{name} ({path})"


if __name__ == "__main__":
    main()
