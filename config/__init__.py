"""Configuration, read in one place: settings from the environment, and (later) Celery
configuration, routing rules and the heartbeat service catalogue."""

from config.settings import Settings, get_settings, load_settings, normalize_team

__all__ = ["Settings", "get_settings", "load_settings", "normalize_team"]
