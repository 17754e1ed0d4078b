"""CPU time and memory of processes, read from /proc (Linux)."""

import os
import threading
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid, children=True):
    """User + system CPU seconds of ``pid``; with ``children``, also of its reaped children (git runs)."""
    with open(f"/proc/{pid}/stat") as handle:
        # The command name may contain spaces; the fields after it are fixed.
        fields = handle.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    ticks = utime + stime + (cutime + cstime if children else 0)
    return ticks / CLOCK_TICKS


def total_cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass  # a worker that went away between listing and reading
    return total


def threads_cpu_seconds(pids):
    """CPU seconds of every live thread of ``pids``, in nanoseconds' precision (/proc/<pid>/task/*/schedstat).

    /proc/<pid>/stat counts in 10 ms ticks: over a one-second cell of a
    millisecond request that is too coarse to tell 0.3 ms from 0.5 ms.
    gunicorn's worker threads live as long as the worker, so none is missed.
    """
    return sum(sum(thread_cpu_seconds(pid).values()) for pid in pids)


def own_cpu_seconds():
    """CPU seconds of this process, all threads."""
    times = os.times()
    return times.user + times.system


def machine_busy_seconds():
    """CPU seconds all processes on the machine have used since boot (all cores, /proc/stat)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def load_average():
    with open("/proc/loadavg") as handle:
        return [float(value) for value in handle.read().split()[:3]]


def status_kib(pid, field):
    """A ``VmRSS``/``VmHWM``-style field of /proc/<pid>/status, in KiB."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid):
    """Reset VmHWM to the current RSS (``echo 5 > clear_refs``); False when not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Samples VmRSS of one process every ``interval`` seconds in a thread.

    A backstop for VmHWM (which needs clear_refs to be reset) and the data
    for the memory plot.
    """

    def __init__(self, pid, interval=0.005):
        self.pid = pid
        self.interval = interval
        self.samples = []  # (seconds since start, KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = None

    def __enter__(self):
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter() - self._start, status_kib(self.pid, "VmRSS")))
            except OSError:
                return
            self._stop.wait(self.interval)

    @property
    def peak_kib(self):
        return max((kib for _, kib in self.samples), default=0)


def tree_pids(pid):
    """``pid`` and every live process below it (a gunicorn master: its workers and their sandboxes)."""
    pids, pending = [], [pid]
    while pending:
        pid = pending.pop()
        pids.append(pid)
        try:
            for thread in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{thread}/children") as children:
                    pending += [int(child) for child in children.read().split()]
        except OSError:
            pass  # it ended meanwhile
    return pids


def total_rss_bytes(pids):
    total = 0
    for pid in pids:
        try:
            total += status_kib(pid, "VmRSS") * 1024
        except (OSError, KeyError):
            pass  # a process that just ended
    return total


def thread_cpu_seconds(pid):
    """{thread id: CPU seconds} of every live thread of ``pid`` (schedstat: nanoseconds' precision)."""
    seconds = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return seconds
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as handle:
                seconds[int(tid)] = int(handle.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return seconds
