"""The only room that starts processes: `ftjobs up` (embedded Redis, the API, workers) and `ftjobs demo`."""
