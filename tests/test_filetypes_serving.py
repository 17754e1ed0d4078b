"""filetypes.serving for a stored type no family has (a row from before a type was dropped): no database needed."""

import pytest

import filetypes


@pytest.mark.parametrize("stored", ["text/html", "image/svg+xml", "application/octet-stream", "image/x-removed"])
def test_a_stored_type_no_family_has_is_served_as_a_sandboxed_attachment(stored):
    """A row whose type nothing accepts (any more): never shown inline, never without the sandbox policy."""
    assert filetypes.family_of(stored) is None
    serving = filetypes.serving(stored)
    assert (serving.content_type, serving.disposition, serving.sandboxed) == (stored, "attachment", True)
