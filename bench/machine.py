"""What a run measured on: the machine and the Procfile's gunicorn settings, recorded in every section's results."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine_facts():
    cpu_model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu_model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model, "memory_gib": memory_gib,
            "python": platform.python_version(), "kernel": platform.release()}


def gunicorn_facts():
    """The Procfile's gunicorn settings, read in a child process: the file has side effects (env, temp dirs)."""
    script = ("import json, runpy; s = runpy.run_path('gunicorn.conf.py'); "
              "print(json.dumps({k: s[k] for k in ('workers', 'threads', 'worker_class', 'keepalive', 'timeout')}))")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": "/nonexistent-unused"}  # so it creates no metrics dir
    output = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, capture_output=True,
                            text=True).stdout
    settings = json.loads(output)
    return (f"{settings['workers']} workers × {settings['threads']} threads, worker_class {settings['worker_class']}, "
            f"keepalive {settings['keepalive']} s, timeout {settings['timeout']} s")
