"""The tools researchers already use: the harness's models as transformers models (`hf_config`, `hf_model`),
saved checkpoints (`checkpoint`) with what transformers' trust_remote_code loads (`remote_code`), and lm-eval
(scoring a checkpoint: `lm_eval_scoring`; exporting tasks: `lm_eval_export`; lm-eval's own command line with the
model type registered: `lm_eval_cli`)."""
