"""Prefect flows that run the DVC pipeline (``dvc.yaml``); DVC decides what is up to date."""
