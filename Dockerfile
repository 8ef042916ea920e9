# Two images from one file (deploy/compose.yaml builds both):
#   docker build --target api    -t ftjobs-api .     # FastAPI service + webhook dispatcher, no torch
#   docker build --target worker -t ftjobs-worker .  # RQ worker with torch + transformers + peft
# Both run as the unprivileged user `ftjobs` (uid 10001) and log JSON lines (FTJOBS_LOG_FORMAT=json).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FTJOBS_LOG_FORMAT=json \
    FTJOBS_DATA_DIR=/var/lib/ftjobs \
    FTJOBS_MODEL_ROOTS=/models
# A fixed uid/gid, so volumes can be prepared for it; the data folder is created owned by it, so a named volume
# mounted there starts writable.
RUN groupadd --system --gid 10001 ftjobs \
 && useradd --system --uid 10001 --gid ftjobs --create-home --home-dir /home/ftjobs ftjobs \
 && mkdir -p /var/lib/ftjobs /models \
 && chown ftjobs:ftjobs /var/lib/ftjobs
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ftjobs ./ftjobs
COPY client ./client
COPY core ./core
COPY service ./service
COPY jobs ./jobs
COPY launch ./launch

FROM base AS api
RUN pip install ".[service,parquet]"
USER ftjobs
EXPOSE 8000
# Liveness only (/healthz does not ask Redis): a Redis outage must not get every replica restarted.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
# FTJOBS_REDIS_URL, FTJOBS_STORAGE_URL and FTJOBS_MODEL_ROOTS come from the deployment.
# uvloop and httptools (uvicorn[standard], the service extra): named, so an image without them fails to start.
CMD ["uvicorn", "--factory", "ftjobs.service.main:app_from_env", "--host", "0.0.0.0", "--port", "8000", "--no-access-log", \
     "--loop", "uvloop", "--http", "httptools"]

FROM base AS worker
# torch first and pinned (as the Makefile does): any other torch request pulls a multi-GB CUDA build. Pick the
# CUDA or CPU index for your hardware class with TORCH_INDEX_URL.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && pip install ".[worker,tracking,qlora,parquet]" torch==2.13.0
USER ftjobs
# The worker serves no HTTP: healthy while its Redis answers (a lost Redis is what it cannot work without).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, redis; redis.Redis.from_url(os.environ['FTJOBS_REDIS_URL'], socket_timeout=4).ping()"]
# One queue per hardware class: FTJOBS_QUEUE=gpu-h100, cpu, ...
CMD ["python", "-m", "ftjobs.jobs.worker"]
