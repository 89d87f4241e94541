"""Plugins that let other tools drive videokv through its public API (lmms-eval: `lmms_eval.py`)."""
