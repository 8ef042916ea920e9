"""What the API and the worker share, defined once: settings, the artifact store, the RQ queue, the Redis layout
and the dataset row rules. Imports pydantic, redis, rq and fsspec only (never fastapi, torch or httpx)."""
