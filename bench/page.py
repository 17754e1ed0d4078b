"""docs/PERFORMANCE.md is written in sections, each between its own markers, by the script that measured it."""

import argparse
import json
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def write_section(docs_dir, begin, end, text):
    """Put ``text`` between the ``begin`` and ``end`` markers of docs_dir/PERFORMANCE.md (appended when they
    are not there yet); the page's other parts stay as they are. Returns the page's path."""
    path = Path(docs_dir) / "PERFORMANCE.md"
    page = path.read_text() if path.exists() else "# Performance\n"
    section = f"{begin}\n\n{text}\n{end}"
    if begin in page and end in page:
        before, rest = page.split(begin, 1)
        page = before + section + rest.split(end, 1)[1]
    else:
        page = page.rstrip() + "\n\n" + section + "\n"
    path.write_text(page)
    return path


def section_command(argv, prog, description, results_path, run, render, markers, add_arguments=None):
    """What ``scripts/bench <section>`` does for a section with its own markers: measure (``run(args)``) or,
    with --render, take the saved results; print the section and write it into the page."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--render", action="store_true", help=f"only rebuild the section from {results_path}")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    results = json.loads(Path(results_path).read_text()) if args.render else run(args)
    text = render(results)  # once: a section's render may draw its plot too
    print(text)
    print(f"wrote {write_section(DOCS, *markers, text)}")
    return 0


def save_results(results, path, started):
    """Close a section's results (the load after, how long the run took, when it finished) and save them
    where ``--render`` finds them; the results."""
    from bench import procstat

    results["meta"]["load_after"] = procstat.load_average()
    results["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["meta"]["finished_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    return results
