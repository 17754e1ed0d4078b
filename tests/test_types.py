"""The product type-checks: mypy, with the repository's mypy.ini, finds nothing (issue 18).

mypy.ini says what is checked (the product, not tests, benchmarks or scripts)
and how strictly. Its cache lives in var/mypy_cache, so after the first run
(tens of seconds) only changed modules are checked again: about a second.
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_SECONDS = 600  # a cold run on a slow machine; it normally takes a second, cached


def test_the_product_type_checks() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, f"mypy exited {result.returncode}:\n{result.stdout}{result.stderr}"
