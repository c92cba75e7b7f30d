"""FastAPI service that serves the models dvc.lock records (run: ``python -m serve``)."""
