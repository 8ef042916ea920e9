"""Where state lives: Redis key names, job-hash fields, artifact-store paths and the one write script.

Defined once here and used by `service/store.py` (reads, API-side transitions) and `jobs/report.py`
(worker-side writes). Per tenant, besides each job: its jobs by creation (`tenant_jobs_key`) and by status
(`status_index_key`), its files, usage totals, upload bytes per day and request-rate state.
Pure Python: no redis import, so the client may ship it.

Job record: a Redis hash at `job_key(tenant, id)`. Every value is a JSON document (strings too), encoded and
decoded by `core/records.py`. Fields (see `JobField`): id, tenant, status, created_at, started_at, finished_at,
request (the JobCreate as submitted), resolved (resolved hyperparameters + derived values), progress,
last_metrics, results, attempt, cancel_requested, pause_requested, error, artifacts, heartbeat_at, worker.

Event and metric streams: Redis Streams at `events_key` / `metrics_key`; each entry has a single field
`json` holding the Event / MetricPoint without its `id` (the stream id is the id; `core/records.py` again).
"""

from __future__ import annotations

from enum import StrEnum

PREFIX = "ftjobs"


class JobField(StrEnum):
    id = "id"
    tenant = "tenant"
    status = "status"
    created_at = "created_at"
    started_at = "started_at"
    finished_at = "finished_at"
    request = "request"
    resolved = "resolved"
    progress = "progress"
    last_metrics = "last_metrics"
    results = "results"
    attempt = "attempt"
    cancel_requested = "cancel_requested"
    pause_requested = "pause_requested"  # a running job checkpoints at its next step end and goes to `paused`
    error = "error"
    artifacts = "artifacts"
    heartbeat_at = "heartbeat_at"
    worker = "worker"


STREAM_FIELD = "json"
STREAM_MAXLEN = 100_000  # entries kept per job stream (approximate trim)


def job_key(tenant: str, job_id: str) -> str:
    return f"{PREFIX}:t:{tenant}:job:{job_id}"


def events_key(tenant: str, job_id: str) -> str:
    return f"{PREFIX}:t:{tenant}:job:{job_id}:events"


def metrics_key(tenant: str, job_id: str) -> str:
    return f"{PREFIX}:t:{tenant}:job:{job_id}:metrics"


def tenant_jobs_key(tenant: str) -> str:
    """Sorted set (all scores 0, members = job ids) ordered lexically = by creation time."""
    return f"{PREFIX}:t:{tenant}:jobs"


def status_index_prefix(tenant: str) -> str:
    """Prefix of the tenant's status index: one sorted set per status (`status_index_key`)."""
    return f"{PREFIX}:t:{tenant}:by-status:"


def status_index_key(tenant: str, status: str) -> str:
    """Sorted set (all scores 0, members = job ids, lexical = creation order) of the tenant's jobs in `status`.
    Written with the status itself: in `Store.create_job`'s transaction and inside GUARDED_WRITE."""
    return f"{status_index_prefix(tenant)}{status}"


# Set (after a completed run) once the jobs of a deployment older than the status index are in it.
STATUS_INDEX_BACKFILLED_KEY = f"{PREFIX}:by-status:backfilled"


def tenant_usage_key(tenant: str) -> str:
    """Hash of the tenant's running totals (`stored_bytes`), kept by `Store.add_file`."""
    return f"{PREFIX}:t:{tenant}:usage"


def upload_day_key(tenant: str, day: str) -> str:
    """Bytes the tenant uploaded on UTC day `day` (YYYYMMDD); expires after UPLOAD_DAY_TTL_S."""
    return f"{PREFIX}:t:{tenant}:uploaded:{day}"


UPLOAD_DAY_TTL_S = 2 * 24 * 3600


def rate_key(tenant: str) -> str:
    """The tenant's request-rate state (GCRA: the theoretical arrival time), shared by every API replica."""
    return f"{PREFIX}:t:{tenant}:rate"


def file_key(tenant: str, file_id: str) -> str:
    """String holding the FileObject JSON."""
    return f"{PREFIX}:t:{tenant}:file:{file_id}"


def tenant_files_key(tenant: str) -> str:
    return f"{PREFIX}:t:{tenant}:files"


def result_file_claim_key(tenant: str, job_id: str) -> str:
    """String naming the result file (metrics CSV) of a job once the OpenAI API has materialised it (SET NX)."""
    return f"{PREFIX}:t:{tenant}:results:{job_id}"


def deleted_models_key(tenant: str) -> str:
    """Set of job ids whose fine-tuned model the tenant deleted (`DELETE /v1/models/{ft:...}`)."""
    return f"{PREFIX}:t:{tenant}:deleted-models"


def idempotency_key(tenant: str, key: str) -> str:
    """String holding {"job_id", "request_sha256"}; expires after IDEMPOTENCY_TTL_S."""
    return f"{PREFIX}:t:{tenant}:idem:{key}"


IDEMPOTENCY_TTL_S = 24 * 3600

# Sorted set of running attempts: member `heartbeat_member(...)`, score = last heartbeat (unix seconds).
HEARTBEATS_KEY = f"{PREFIX}:heartbeats"


def heartbeat_member(tenant: str, job_id: str, attempt: int) -> str:
    return f"{tenant}|{job_id}|{attempt}"


def parse_heartbeat_member(member: str) -> tuple[str, str, int]:
    tenant, job_id, attempt = member.split("|")
    return tenant, job_id, int(attempt)


# Set of every job not yet in a terminal status: members `active_member(tenant, job_id)`. The API adds a job when
# it creates it; the reconciler (jobs/reconcile.py) walks it and drops the jobs it finds finished.
ACTIVE_JOBS_KEY = f"{PREFIX}:active"


def active_member(tenant: str, job_id: str) -> str:
    return f"{tenant}|{job_id}"


# Set (SET NX) once a reconciler has added the jobs of a deployment older than ACTIVE_JOBS_KEY to it.
ACTIVE_BACKFILLED_KEY = f"{PREFIX}:active:backfilled"


def recovery_claim_key(tenant: str, job_id: str, run: int) -> str:
    """SET NX by the one process that re-enqueues a job's lost validation `run` (validations share attempt 0)."""
    return f"{PREFIX}:claim:{tenant}|{job_id}|0|{run}"


def suspect_key(tenant: str, job_id: str, attempt: int, status: str) -> str:
    """When a reconciler first saw this (job, attempt, status) with no live lease and no waiting RQ job."""
    return f"{PREFIX}:suspect:{tenant}|{job_id}|{attempt}|{status}"


# Multi-process and multi-node attempts (jobs/training/distributed.py, jobs/training/nodes.py); both expire.
RANKS_TTL_S = 24 * 3600


def ranks_key(tenant: str, job_id: str, attempt: int) -> str:
    """Hash of an attempt's ranks' last words: field = global rank, value = JSON (rank 0's outcome, a rank's error,
    or that it ended well), written by each rank wherever it runs and read by the attempt's horse."""
    return f"{PREFIX}:ranks:{tenant}|{job_id}|{attempt}"


def nodes_key(tenant: str, job_id: str, attempt: int) -> str:
    """Hash of a multi-node attempt's gang: `endpoint` (the rendezvous HOST:PORT), `closed` (the horse stopped
    waiting), `node-<k>` (member k's word: `joined`, or a JSON error/leave) for k = 1 .. nodes-1."""
    return f"{PREFIX}:nodes:{tenant}|{job_id}|{attempt}"


# --------------------------------------------------------------------------- webhooks (core/webhooks.py)
# A status change into one of WEBHOOK_STATUSES appends {tenant, job, status} to the outbox stream, inside
# GUARDED_WRITE (so no transition is lost), when the tenant has endpoints. The dispatcher's consumer group fans each
# entry out into deliveries: a hash each, due times in one sorted set, each attempt kept in the endpoint's history.
WEBHOOK_STATUSES = ("running", "succeeded", "failed", "cancelled", "paused")
WEBHOOK_OUTBOX_KEY = f"{PREFIX}:webhooks:outbox"
WEBHOOK_GROUP = "dispatchers"  # the dispatchers' consumer group on the outbox
WEBHOOK_DUE_KEY = f"{PREFIX}:webhooks:due"  # sorted set: delivery id -> when it is due (or its lease ends)

# Sorted set of finished jobs not yet archived (`active_member` form; score = when they ended, unix seconds):
# GUARDED_WRITE adds a job when it turns terminal; core/retention.py archives its streams and removes it.
RETENTION_DUE_KEY = f"{PREFIX}:retention:due"
TERMINAL = ("succeeded", "failed", "cancelled")  # JobStatus's terminal values (no client import here)


def webhooks_key(tenant: str) -> str:
    """Hash of the tenant's endpoints: endpoint id -> its JSON, secret included (needed to sign)."""
    return f"{PREFIX}:t:{tenant}:webhooks"


def webhook_history_key(tenant: str, endpoint_id: str) -> str:
    """Stream of an endpoint's recent delivery attempts (bounded)."""
    return f"{PREFIX}:t:{tenant}:webhook:{endpoint_id}:deliveries"


def webhook_delivery_key(delivery_id: str) -> str:
    """Hash of one pending delivery: `json` (tenant, endpoint, event id, type, body), `attempts` made so far."""
    return f"{PREFIX}:webhooks:delivery:{delivery_id}"


# --------------------------------------------------------------------------- artifact store layout
# Paths relative to the storage root URL (FTJOBS_STORAGE_URL, default file://<data_dir>/store).


def file_path(tenant: str, file_id: str) -> str:
    return f"{tenant}/files/{file_id}.jsonl"


def file_profile_path(tenant: str, file_id: str) -> str:
    """The FileProfile JSON computed at upload, next to the dataset."""
    return f"{tenant}/files/{file_id}.profile.json"


def file_lines_path(tenant: str, file_id: str) -> str:
    """A CSV or Parquet upload's line map: which line (row) of the uploaded file each stored JSONL row was."""
    return f"{tenant}/files/{file_id}.lines.json"


def file_label_issues_path(tenant: str, file_id: str) -> str:
    """A text_label file's likely label errors (LabelIssues JSON), by the first classification job's validation."""
    return f"{tenant}/files/{file_id}.label_issues.json"


def file_tokens_dir(tenant: str, file_id: str) -> str:
    """Token statistics of the file as jobs tokenized it: one JSON per job (`<job_id>.json`), by its validation."""
    return f"{tenant}/files/{file_id}.tokens"


def job_dir(tenant: str, job_id: str) -> str:
    return f"{tenant}/jobs/{job_id}"


def artifact_path(tenant: str, job_id: str, name: str) -> str:
    return f"{job_dir(tenant, job_id)}/artifacts/{name}"


def staging_dir(tenant: str, job_id: str, attempt: int) -> str:
    """Where an attempt uploads its artifacts before they are finalised (moved under artifacts/)."""
    return f"{job_dir(tenant, job_id)}/staging-{attempt}"


def job_record_path(tenant: str, job_id: str) -> str:
    """Final job record written at the end so a lost Redis does not lose a finished job's results."""
    return f"{job_dir(tenant, job_id)}/job.json"


def checkpoints_dir(tenant: str, job_id: str) -> str:
    """A running job's resumable checkpoints (deleted when the job finishes)."""
    return f"{job_dir(tenant, job_id)}/checkpoints"


def checkpoint_path(tenant: str, job_id: str, attempt: int, step: int) -> str:
    """One uploaded checkpoint; it counts only once `checkpoint_pointer_path` names it."""
    return f"{checkpoints_dir(tenant, job_id)}/attempt-{attempt}-step-{step}"


def checkpoint_pointer_path(tenant: str, job_id: str) -> str:
    """latest.json: the newest complete checkpoint (step, attempt, path, files with sha256), written last."""
    return f"{checkpoints_dir(tenant, job_id)}/latest.json"


# --------------------------------------------------------------------------- the one write script
# GUARDED_WRITE: every status transition and every worker write goes through it, atomically.
#   KEYS = `guarded_write_keys(tenant, job_id, stream)`:
#   KEYS[1] = job hash, KEYS[2] = stream to append to (events or metrics; ignored when no entry)
#   KEYS[3] = the tenant's status index prefix (`status_index_prefix`): a write that changes `status` moves the
#             job id from `<prefix><old>` to `<prefix><new>` in the same step
#   KEYS[4], KEYS[5] = the webhook outbox and the tenant's endpoints: a change into one of WEBHOOK_STATUSES is
#             appended to the outbox in the same step while the tenant has endpoints (optional: 3 KEYS skip it)
#   ARGV[1] = attempt that must be current ("" = any attempt)
#   ARGV[2] = comma-separated statuses the job must be in ("" = any status)
#   ARGV[3] = number N of hash field/value pairs that follow
#   ARGV[4 .. 3+2N] = field, value pairs (values JSON-encoded by the caller)
#   (`core/records.py` `guarded_write_args` builds this ARGV)
#   ARGV[4+2N] = stream entry JSON ("" = append nothing)
# Returns {1, status_after} if written, {0, current_status_or_""} if the guard refused.
# A missing job hash refuses with "" (nothing is ever half-created by a writer).
GUARDED_WRITE = """
if #KEYS < 3 then return redis.error_reply('GUARDED_WRITE needs 3 KEYS: guarded_write_keys()') end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, ''} end
if ARGV[1] ~= '' then
  local attempt = redis.call('HGET', KEYS[1], 'attempt')
  if attempt ~= ARGV[1] then return {0, status} end
end
if ARGV[2] ~= '' then
  local ok = false
  for s in string.gmatch(ARGV[2], '([^,]+)') do
    if '"' .. s .. '"' == status then ok = true end
  end
  if not ok then return {0, status} end
end
local n = tonumber(ARGV[3])
local new_status = nil
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[4 + 2 * i], ARGV[5 + 2 * i])
  if ARGV[4 + 2 * i] == 'status' then new_status = ARGV[5 + 2 * i] end
end
if new_status and new_status ~= status then
  local id = cjson.decode(redis.call('HGET', KEYS[1], 'id'))
  redis.call('ZREM', KEYS[3] .. cjson.decode(status), id)
  redis.call('ZADD', KEYS[3] .. cjson.decode(new_status), 0, id)
  local hooked = {""" + ", ".join(f"{s} = true" for s in WEBHOOK_STATUSES) + """}
  if #KEYS >= 5 and hooked[cjson.decode(new_status)] and redis.call('EXISTS', KEYS[5]) == 1 then
    local tenant = cjson.decode(redis.call('HGET', KEYS[1], 'tenant'))
    redis.call('XADD', KEYS[4], '*', 'tenant', tenant, 'job', id, 'status', cjson.decode(new_status))
  end
  local ended = {""" + ", ".join(f"{s} = true" for s in TERMINAL) + """}
  if ended[cjson.decode(new_status)] then  -- due for archiving (core/retention.py), scored by when it ended
    local owner = cjson.decode(redis.call('HGET', KEYS[1], 'tenant'))
    redis.call('ZADD', '""" + RETENTION_DUE_KEY + """', redis.call('TIME')[1], owner .. '|' .. id)
  end
end
local entry = ARGV[4 + 2 * n]
if entry and entry ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '""" + str(STREAM_MAXLEN) + """', '*', '""" + STREAM_FIELD + """', entry)
end
return {1, redis.call('HGET', KEYS[1], 'status')}
"""


def guarded_write_keys(tenant: str, job_id: str, stream: str | None = None) -> list[str]:
    """KEYS of GUARDED_WRITE for one job (`stream`: where its entry goes; default the job's events)."""
    return [
        *(job_key(tenant, job_id), stream or events_key(tenant, job_id), status_index_prefix(tenant)),
        *(WEBHOOK_OUTBOX_KEY, webhooks_key(tenant)),
    ]


# INDEX_STATUS: put jobs into the status index under the status they have now (the backfill of jobs older than
# the index; atomic per call, so a transition running beside it cannot leave a job under a stale status).
#   KEYS[1] = the tenant's status index prefix, KEYS[2 ..] = job hashes; ARGV = their job ids (same order)
# Returns how many jobs were indexed.
INDEX_STATUS = """
local added = 0
for i = 2, #KEYS do
  local status = redis.call('HGET', KEYS[i], 'status')
  if status then
    added = added + redis.call('ZADD', KEYS[1] .. cjson.decode(status), 0, ARGV[i - 1])
  end
end
return added
"""
