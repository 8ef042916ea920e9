"""The worker side of ftjobs: RQ workers that run fine-tuning jobs and report them through Redis.

Never imports fastapi, starlette, httpx or `service`. `jobs` and `jobs.worker` keep torch out of the
worker's parent process (RQ forks a work horse per job; torch is imported there, in `jobs.train.run`).
"""

import logging as _logging

# bitsandbytes (imported by peft when installed) warns at import on a CPU with AVX512-BF16 that it could not fetch
# an optional kernel from the hub; workers never reach a hub, and the fallback kernel works: keep the log quiet.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
