"""The PNGs of docs/PERFORMANCE.md's generated part: throughput, service ÷ passthrough, a worker's memory."""

from pathlib import Path

from bench.results import cells, ratio
from bench.targets import ratio_target, upload_rss_allowance

SYSTEM_LABELS = {"service": "service", "passthrough": "passthrough (HTTP floor)", "boto3": "boto3 direct (storage floor)"}
SYSTEM_STYLES = (("service", "o-"), ("passthrough", "s--"), ("boto3", "^:"))
DIRECTIONS = ("upload", "download")


def plot(results, docs_dir):
    """Write the PNGs; return {name: file name relative to docs/}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {}
    grid = cells(results)
    meta = results["meta"]
    if grid:
        names["throughput"] = _plot_throughput(plt, grid, meta, docs_dir)
        names["ratio"] = _plot_ratio(plt, grid, meta, docs_dir)
    if results.get("memory"):
        names["memory"] = _plot_memory(plt, results["memory"], docs_dir)
    return names


def _save(plt, figure, docs_dir, name):
    figure.tight_layout()
    figure.savefig(Path(docs_dir) / name, dpi=90)
    plt.close(figure)
    return name


def _plot_throughput(plt, grid, meta, docs_dir):
    concurrencies = meta["concurrencies"]
    figure, axes = plt.subplots(2, len(concurrencies), figsize=(4.2 * len(concurrencies), 7.5), sharey=True,
                                squeeze=False)
    for row, direction in enumerate(DIRECTIONS):
        for column, c in enumerate(concurrencies):
            _throughput_axis(axes[row][column], grid, meta["sizes"], direction, c)
            if column == 0:
                axes[row][column].set_ylabel("MB/s")
    axes[0][0].legend(fontsize=8)
    figure.suptitle("Throughput by image size (log-log); higher is better")
    return _save(plt, figure, docs_dir, "perf-throughput.png")


def _throughput_axis(axis, grid, sizes_by_label, direction, c):
    labels = list(sizes_by_label)
    sizes = [sizes_by_label[label] for label in labels]
    for system, style in SYSTEM_STYLES:
        values = [grid.get((system, direction, label, c), {}).get("mb_per_second", float("nan")) for label in labels]
        axis.plot(sizes, values, style, label=SYSTEM_LABELS[system])
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xticks(sizes, labels)
    axis.minorticks_off()
    axis.set_title(f"{direction}s, {c} client{'s' if c > 1 else ''}")
    axis.grid(True, which="major", alpha=0.3)


def _plot_ratio(plt, grid, meta, docs_dir):
    labels = list(meta["sizes"])
    concurrencies = meta["concurrencies"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    width = 0.8 / len(concurrencies)
    for axis, direction in zip(axes, DIRECTIONS):
        for index, c in enumerate(concurrencies):
            values = [ratio(grid, direction, label, c) for label in labels]
            positions = [x + (index - (len(concurrencies) - 1) / 2) * width for x in range(len(labels))]
            axis.bar(positions, values, width, label=f"c={c}")
        target = ratio_target(direction)
        axis.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target {target} (≥ 100 KB)")
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xticks(range(len(labels)), labels)
        axis.set_title(f"{direction}s: service ÷ passthrough (req/s)")
        axis.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("ratio")
    axes[0].legend(fontsize=8)
    return _save(plt, figure, docs_dir, "perf-ratio.png")


def _plot_memory(plt, memory_rows, docs_dir):
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, direction in zip(axes, DIRECTIONS):
        for row in memory_rows:
            if row["direction"] == direction and row.get("timeline"):
                _memory_line(axis, row, direction)
        axis.set_title(f"worker RSS, 8 concurrent {direction}s × 3 rounds")
        axis.set_xlabel("seconds")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    axes[0].set_ylabel("MiB")
    return _save(plt, figure, docs_dir, "perf-memory.png")


def _memory_line(axis, row, direction):
    """One type's RSS over time, and its allowance as a dashed line of the same colour."""
    times = [t for t, _ in row["timeline"]]
    values = [kib / 1024 for _, kib in row["timeline"]]
    line = axis.plot(times, values, label=f"{row['content_type']} ({row['pixels'] / 1e6:.0f} Mpx)")[0]
    allowed = upload_rss_allowance(row["content_type"])
    axis.axhline(row["baseline_kib"] / 1024 + allowed, color=line.get_color(), linestyle="--", linewidth=1,
                 label=f"baseline + {allowed} MiB" if direction == "upload" else None)
