"""Chat workspaces: relative paths that must stay inside WORKSPACES_ROOT."""

import os
import posixpath


class WorkspaceError(ValueError):
    """The path is not a workspace this service may look into."""


def normalize(relative_path):
    """Validate a client-given workspace path and return its normal form."""
    if not isinstance(relative_path, str) or not relative_path.strip():
        raise WorkspaceError("The workspace must be a non-empty relative path.")
    if "\0" in relative_path or "\\" in relative_path or not _encodable(relative_path):
        raise WorkspaceError("The workspace path has a forbidden character.")
    if relative_path.startswith("/"):
        raise WorkspaceError("The workspace must be relative to the workspaces root, not absolute.")
    if ".." in relative_path.split("/"):
        raise WorkspaceError("The workspace path must not contain '..'.")
    normal = posixpath.normpath(relative_path)
    if normal == ".":
        raise WorkspaceError("The workspace must be a directory below the workspaces root.")
    return normal


def _encodable(text):
    # JSON can carry lone surrogates; no file system (or database) can store them.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resolve(root, relative_path):
    """The absolute path of a workspace, refusing any that a symlink leads out of the root."""
    real_root = os.path.realpath(root)
    real_path = os.path.realpath(os.path.join(real_root, normalize(relative_path)))
    if not real_path.startswith(real_root + os.sep):
        raise WorkspaceError("The workspace path leads outside the workspaces root.")
    return real_path
