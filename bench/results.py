"""Figures read off the results dict a run of ``scripts/bench`` produces (what bench/__main__.py saves)."""


def cells(results):
    """The grid's cells by (system, direction, size label, concurrency)."""
    return {(cell["system"], cell["direction"], cell["size_label"], cell["concurrency"]): cell
            for cell in results.get("grid", [])}


def ratio(cells, direction, label, concurrency):
    """Service req/s ÷ passthrough req/s in one cell of the grid; NaN where either is missing."""
    service = cells.get(("service", direction, label, concurrency))
    floor = cells.get(("passthrough", direction, label, concurrency))
    if not service or not floor or not floor["rate"]:
        return float("nan")
    return service["rate"] / floor["rate"]


def per_request(cell, key):
    """CPU ms per request of a cell's ``key`` (server_cpu, storage_cpu ...)."""
    return 1000 * cell[key] / cell["requests"] if cell["requests"] else float("nan")


def conditional_speedups(results):
    """{concurrency: 304 req/s ÷ 200 req/s}, from the conditional section."""
    rows = results.get("conditional", [])
    rates = {(row["status"], row["concurrency"]): row["rate"] for row in rows}
    return {c: rates["304", c] / rates["200", c] for (status, c) in rates if status == "304" and rates.get(("200", c))}


def not_modified_overhead(results, above="bare", of="304"):
    """{concurrency: server CPU ms per request of ``of`` − of ``above``}, from the conditional section.

    Default: the 304 overhead (the service's 304 − the bare app's); ``of="flask"``: Flask's own floor;
    ``of="contract"``: the least a correct 304 costs (bench/contract_304.py).
    """
    by_key = {(row["status"], row["concurrency"]): row for row in results.get("conditional", [])}
    return {c: per_request(by_key[of, c], "server_cpu") - per_request(by_key[above, c], "server_cpu")
            for (status, c) in by_key if status == of and (above, c) in by_key}

