"""Test doubles of paid services: in-process HTTP servers that imitate their APIs. Not the real services."""
