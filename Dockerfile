# Two images from one file:
#   docker build --target api    -t ftjobs-api .     # FastAPI service, no torch
#   docker build --target worker -t ftjobs-worker .  # RQ worker with torch + transformers + peft
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
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
RUN useradd --create-home ftjobs
USER ftjobs
EXPOSE 8000
# FTJOBS_REDIS_URL, FTJOBS_STORAGE_URL and FTJOBS_MODEL_ROOTS come from the deployment.
CMD ["uvicorn", "--factory", "ftjobs.service.main:app_from_env", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
# torch first and pinned; pick the CUDA or CPU index for your hardware class with TORCH_INDEX_URL.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && pip install ".[worker,tracking,qlora]" torch==2.13.0
RUN useradd --create-home ftjobs
USER ftjobs
# One queue per hardware class: FTJOBS_QUEUE=gpu-h100, cpu, ...
CMD ["python", "-m", "ftjobs.jobs.worker"]
