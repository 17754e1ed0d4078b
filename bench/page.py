"""docs/PERFORMANCE.md is written in sections, each between its own markers, by the script that measured it."""

from pathlib import Path


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
