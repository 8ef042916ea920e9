"""The worker side of ftjobs: RQ workers that run fine-tuning jobs and report them through Redis.

Never imports fastapi, starlette, httpx or `service`. `jobs` and `jobs.worker` keep torch out of the
worker's parent process (RQ forks a work horse per job; torch is imported there, in `jobs.train.run`).
"""
