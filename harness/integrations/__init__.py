"""The tools researchers already use: the harness's models as transformers models (`hf_config`, `hf_model`),
saved checkpoints (`checkpoint`), and lm-eval (scoring a checkpoint: `lm_eval_scoring`; exporting tasks:
`lm_eval_export`; lm-eval's own command line: `lm_eval_cli`)."""
