"""A worked example of a harness plugin. Importing it registers the mixer `retention` (retention.py)."""

from .retention import Retention, RetentionConfig

__all__ = ["Retention", "RetentionConfig"]
