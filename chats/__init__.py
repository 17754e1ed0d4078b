"""Chats as the service knows them: who may reach one (access.py), the files linked to them (links.py)."""
