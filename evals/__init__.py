"""Evaluation sources: lm-eval task YAMLs and the probes' scoring code (evals/tasks/)."""
