"""Storage URLs to Optuna storages, engine settings, and what the database must guarantee."""

from storage._errors import StorageError

__all__ = ["StorageError"]
