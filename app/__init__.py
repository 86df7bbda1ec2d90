"""The HTTP service: FastAPI app, model registry, batching and the web page."""
