"""lm-eval tasks over the world (run with `lm_eval --include_path evals/tasks`); see README.md."""
