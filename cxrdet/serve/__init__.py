"""``cxrdet serve``: the web page and HTTP API (FastAPI + uvicorn) around the inference library.

command (flags) -> service (models loaded once) -> app (routes) -> uploads (untrusted input ->
Sample) -> queue (bounded admission, one model thread) -> results (JSON, recent-results store).
"""
