"""The DVC stages: one short script each, run as ``python -m stages.<name>`` (see dvc.yaml)."""
