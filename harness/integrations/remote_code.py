"""What `trust_remote_code=True` loads from a harness checkpoint, so that it loads in a process that never
imported the harness: lm-eval's own `lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True`,
`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`, `pipeline("text-generation", model=DIR,
trust_remote_code=True)`.

Every saved HarnessForCausalLM (hf_model.py) writes two small modules next to its config.json and names them in
the config's `auto_map`:

    configuration_harness.py   class HarnessLMConfig(harness.integrations.hf_config.HarnessLMConfig)
    modeling_harness.py        class HarnessForCausalLM(harness.integrations.hf_model.HarnessForCausalLM)

They hold no model code of their own: they import the installed harness, and where it is missing they fail with
a one-line error that says to install it. The classes are subclasses, not the harness's classes themselves,
because transformers marks a class loaded as remote code for saving (`register_for_auto_class`); a subclass keeps
that mark off the harness's own classes. Without trust_remote_code, transformers' own error says to pass it
(or `import harness.integrations.hf_model` registers the model type, and no remote code is needed).
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from harness.results.provenance import git_state

CONFIG_MODULE = "configuration_harness"
MODEL_MODULE = "modeling_harness"
AUTO_MAP = {
    "AutoConfig": f"{CONFIG_MODULE}.HarnessLMConfig",
    "AutoModelForCausalLM": f"{MODEL_MODULE}.HarnessForCausalLM",
}

# The start of both modules. The harness is imported inside a try block: transformers checks the top-level
# imports of remote code and would otherwise stop at its own advice, "pip install harness" (which installs
# whatever a package index holds under that name), before this message could say where the harness comes from.
_HEADER = '''"""The {what} of a harness checkpoint, for transformers' trust_remote_code=True (written by
harness/integrations/remote_code.py): the installed harness's own code."""

SAVED_BY = {saved_by}

try:
    from harness.integrations.{module} import {cls} as _{cls}
except ImportError as error:
    raise ImportError(
        f"this checkpoint's model code is the harness's ({{SAVED_BY}}), and importing it failed ({{error}}): "
        "install the harness where you load it (from a clone of its repository: pip install -e PATH/TO/harness) "
        "and load again"
    ) from error
'''

_CONFIG_BODY = '''

class HarnessLMConfig(_HarnessLMConfig):
    """The harness's config class; a subclass, so that what transformers records about remote code stays here."""
'''

_MODEL_BODY = '''
from .configuration_harness import HarnessLMConfig


class HarnessForCausalLM(_HarnessForCausalLM):
    """The harness's model class; a subclass, so that what transformers records about remote code stays here."""

    config_class = HarnessLMConfig
'''

# module name: (what it holds, the harness module it imports, the class, the rest of the module)
_MODULES = {
    CONFIG_MODULE: ("config", "hf_config", "HarnessLMConfig", _CONFIG_BODY),
    MODEL_MODULE: ("model", "hf_model", "HarnessForCausalLM", _MODEL_BODY),
}


def saved_by() -> str:
    """'harness 0.1.0, commit daccfe7': what wrote a checkpoint, for the error where the harness is missing."""
    try:
        release = version("harness")
    except PackageNotFoundError:
        release = "(not installed)"
    commit, dirty = git_state()
    return f"harness {release}, commit {commit[:12]}{' (modified)' if dirty else ''}"


def write_remote_code(folder: str | Path) -> list[Path]:
    """Write the two modules that config.json's `auto_map` (AUTO_MAP) names into `folder`."""
    written = []
    for name, (what, module, cls, body) in _MODULES.items():
        path = Path(folder) / f"{name}.py"
        header = _HEADER.format(what=what, saved_by=json.dumps(saved_by()), module=module, cls=cls)
        path.write_text(header + body)
        written.append(path)
    return written
