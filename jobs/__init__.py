"""The worker side of ftjobs: RQ workers that run fine-tuning jobs and report them through Redis.

Never imports fastapi, starlette, httpx, `ftjobs.service` or `ftjobs.launch`. `ftjobs.jobs.worker` keeps torch out of
the worker's parent process (RQ forks a work horse per job; torch is imported there, in `ftjobs.jobs.train.run`).
Rooms: data/ (read, clean, split, augment, tokenize), training/ (methods, Trainer, checkpoints, safeguards),
evaluation/ (metrics, generation, diagnostics, bias), outputs/ (artifacts, model card, trackers).
"""

import logging as _logging

# bitsandbytes (imported by peft when installed) warns at import on a CPU with AVX512-BF16 that it could not fetch
# an optional kernel from the hub; workers never reach a hub, and the fallback kernel works: keep the log quiet.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
