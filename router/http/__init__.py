"""The HTTP edge: FastAPI routes on Ray Serve, authentication, body limit, error rendering."""
