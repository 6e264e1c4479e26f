"""harness: an architecture-comparison evaluation harness for efficient sequence models."""

__version__ = "0.1.0"
