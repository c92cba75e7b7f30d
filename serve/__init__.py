"""FastAPI service that serves the models dvc.lock records (run: ``uvicorn serve.app:app``)."""
