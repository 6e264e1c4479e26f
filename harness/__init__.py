"""harness: an architecture-comparison evaluation harness for efficient sequence models.

Importing the package imports nothing heavy: `harness.registry` is what models and tasks register with. The
transformers model type (`harness_lm`) is registered by importing `harness.integrations.hf_model`.
"""

__version__ = "0.1.0"
