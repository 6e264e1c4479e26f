"""lm-eval's own command line with the harness's model type registered with transformers:

    python -m harness.integrations.lm_eval_cli --model hf --model_args pretrained=CHECKPOINT \
        --tasks harness_mqar --include_path CHECKPOINT/lm_eval_tasks --device cpu

takes every argument lm-eval's `lm_eval` command takes. (lm-eval's own `lm_eval` loads a harness checkpoint too,
with `--model_args pretrained=CHECKPOINT,trust_remote_code=True`: see remote_code.py.)
"""

from lm_eval.__main__ import cli_evaluate

import harness.integrations.hf_model  # noqa: F401  (registers harness_lm with AutoConfig and AutoModelForCausalLM)

if __name__ == "__main__":
    cli_evaluate()
