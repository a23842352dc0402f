"""jielong: shared pieces every stage imports (params, IO, checks, metrics, logging).

Stages live in `stages/` and run as `python -m stages.<name>`; nothing in here
imports a stage.
"""
