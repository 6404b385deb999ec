"""The HTTP front door: the uvicorn protocol with connection limits, admission, ASGI primitives,
compression, the hot-path router, endpoints and the admin API."""
