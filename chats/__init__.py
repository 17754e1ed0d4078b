"""Chats as the service knows them: who may reach one (access.py); their lifecycle lands here next."""
