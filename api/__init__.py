"""ActTail REST API (FastAPI): ``api.app:create_app(settings=None)``. Never imports torch at import time."""
