"""Chat workspaces: paths relative to the owner's directory, ``WORKSPACES_ROOT/<user id>/``,
that must stay inside it (so one user can never name another's workspace)."""

from __future__ import annotations

import os
import posixpath
import uuid


class WorkspaceError(ValueError):
    """The path is not a workspace this service may look into."""


def normalize(relative_path: object) -> str:
    """Validate a client-given workspace path and return its normal form."""
    if not isinstance(relative_path, str) or not relative_path.strip():
        raise WorkspaceError("The workspace must be a non-empty relative path.")
    if "\0" in relative_path or "\\" in relative_path or not _encodable(relative_path):
        raise WorkspaceError("The workspace path has a forbidden character.")
    if relative_path.startswith("/"):
        raise WorkspaceError("The workspace must be relative to your workspaces directory, not absolute.")
    if ".." in relative_path.split("/"):
        raise WorkspaceError("The workspace path must not contain '..'.")
    normal = posixpath.normpath(relative_path)
    if normal == ".":
        raise WorkspaceError("The workspace must be a directory below your workspaces directory.")
    return normal


def _encodable(text: str) -> bool:
    # JSON can carry lone surrogates; no file system (or database) can store them.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def user_dir(root: str, user_id: uuid.UUID) -> str:
    """The real path of a user's workspaces directory (it need not exist yet).

    It must be the directory itself, not a symlink: one pointing at another
    user's directory would hand over every workspace in it.
    """
    real_root = os.path.realpath(root)
    path = os.path.join(real_root, str(user_id))
    if os.path.realpath(path) != path:
        raise WorkspaceError("Your workspaces directory is a symlink; ask an administrator to fix it.")
    return path


def create_user_dir(root: str, user_id: uuid.UUID) -> str:
    """Create ``WORKSPACES_ROOT/<user id>/`` (what a provisioning tool fills) and return it."""
    path = user_dir(root, user_id)
    os.makedirs(path, mode=0o750, exist_ok=True)
    return path


def resolve(base_dir: str, relative_path: object) -> str:
    """The absolute path of a workspace below ``base_dir``, refusing any that a symlink leads out of."""
    real_base = os.path.realpath(base_dir)
    real_path = os.path.realpath(os.path.join(real_base, normalize(relative_path)))
    if not real_path.startswith(real_base + os.sep):
        raise WorkspaceError("The workspace path leads outside your workspaces directory.")
    return real_path


def resolve_for_user(root: str, user_id: uuid.UUID, relative_path: object) -> str:
    """A user's workspace, confined to that user's directory."""
    return resolve(user_dir(root, user_id), relative_path)
