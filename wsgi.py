"""The WSGI entry point: ``gunicorn wsgi:app`` and ``flask --app wsgi``."""

from __future__ import annotations

from flask import Flask

from app import create_app

app: Flask = create_app()
