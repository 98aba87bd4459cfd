"""Alembic's migrations of the project database (``store.schema``); run through ``store.database``."""
