"""Configuration, read in one place: the settings from the environment (``settings``),
routing rules (``routing``), the heartbeat service catalogue (``catalogue``) and the Celery
configuration derived from the settings (``celery_config``, the only one that needs kombu).

Importing ``config`` loads the settings model only; it never imports Celery.
"""

from config.settings import Settings, get_settings, load_settings, normalize_team

__all__ = ["Settings", "get_settings", "load_settings", "normalize_team"]
