"""The REST API: FastAPI app, dependencies, one router per resource."""
