"""Workflows: what drives several stages in order (the demo, the nightly retrain).

They sit above the stages (``pipelines``, ``nsl_models``) and below the CLI,
which only parses their options and prints their progress.
"""
