"""Object storage for file bytes: one interface, an S3 and a local backend.

The object layout is a public interface read by other tools (CONTRACT.md,
"Storage layout"): ``{S3_PREFIX}{organization_id}/{file_id}`` (and variants at
``{VARIANTS_PREFIX}{organization_id}/{file_id}/{variant}``), written once,
never changed, with the stored type as Content-Type and the metadata in
interface.py. The store owns that layout: it is made with the two prefixes
(from_config), and callers ask it for keys (``original_key``,
``variant_key``) and what a listed key names (``original_file_id``,
``variant_of``); no one else reads the prefixes or spells a key.
Backends raise only ``FileNotFoundError`` or :class:`StorageError`.
"""

from __future__ import annotations

from typing import Any, Mapping

from flask import Flask, current_app

from storage.interface import (
    CHUNK_SIZE,
    ByteRange,
    ObjectInfo,
    ObjectStore,
    StorageError,
    StoredObject,
    object_key,
    object_metadata,
    variant_key,
    variant_metadata,
)

__all__ = ["CHUNK_SIZE", "ByteRange", "ObjectInfo", "ObjectStore", "StorageError", "StoredObject", "from_config", "get_storage",
           "init_app", "object_key", "object_metadata", "variant_key", "variant_metadata"]


def from_config(settings: Mapping[str, Any]) -> ObjectStore:
    layout = {"originals_prefix": settings["S3_PREFIX"], "variants_prefix": settings["VARIANTS_PREFIX"]}
    if settings.get("S3_BUCKET"):
        from storage.s3 import S3Store

        return S3Store(
            bucket=settings["S3_BUCKET"],
            endpoint_url=settings.get("S3_ENDPOINT_URL"),
            region=settings["S3_REGION"],
            **layout,
        )
    from storage.local import LocalStore

    return LocalStore(settings["LOCAL_STORAGE_ROOT"], **layout)


def init_app(app: Flask) -> None:
    app.extensions["storage"] = from_config(app.config)


def get_storage() -> ObjectStore:
    return current_app.extensions["storage"]
