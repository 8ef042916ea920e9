"""ftjobs API service: FastAPI app over Redis (state, RQ queue) and an fsspec artifact store."""
