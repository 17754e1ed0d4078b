"""The admin jobs the CLI runs: gc-storage, generate-variants, purge."""

from __future__ import annotations


def count_of(number: int, noun: str) -> str:
    """``3 files``, ``1 file``: the jobs' reports count things."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
