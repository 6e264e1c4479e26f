"""harness: an architecture-comparison evaluation harness for efficient sequence models.

Importing it registers the harness's model type (`harness_lm`) with transformers' AutoConfig and
AutoModelForCausalLM (see harness/hf.py).
"""

__version__ = "0.1.0"

from harness.hf import register as _register_with_transformers  # noqa: E402

_register_with_transformers()
