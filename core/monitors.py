"""Monitors: a succeeded job re-evaluated on a schedule on the newest upload of a dataset (core's half, shared by the
API, which creates monitors and starts runs on demand, and the worker, which runs the scheduled ones and concludes
each run when its evaluation job ends: jobs/monitor.py, jobs/evaluate_job.py).

Scheduling is RQ's own: each monitor has one RQ job `ftjobs.jobs.monitor.run` waiting in the validation queue's
ScheduledJobRegistry for the next time its cron expression names (rq.cron's reading of it); RQ's scheduler
(workers run `with_scheduler`) enqueues it when due, and the run schedules the next one before it starts. A run
finds the newest file of the tenant whose filename is the monitor's `dataset`, creates an ordinary evaluation job
(evaluate_only, the monitored job's weights) on it and records the run as `evaluating`. The evaluation job concludes
the run (`conclude`): the metric against the monitored job's results.final, `ok` or `degraded`; a degraded run queues
a `monitor.degraded` webhook event and, with `retrain`, starts a job that continues from the monitored job
(parent_job_id) on the new file. The request templates of both jobs were checked and resolved by the API when the
monitor was created (its method inherited, its files replaced per run).

Both jobs count against the tenant's max_active_jobs as any job does (`job_writes.create_job` with the limit): at
the quota a scheduled run is recorded `skipped` (reason `max_active_jobs`, a `monitor.skipped` webhook event), a
manual one is refused (the API answers 429) and nothing is recorded, and a degraded run starts no retraining job
(its `reason` and `warning` say so, and so does its `monitor.degraded` event).

Redis: `ftjobs:monitors:{tenant}` (hash: monitor id -> record), `ftjobs:monitor-runs:{tenant}:{id}` (hash: run id ->
MonitorRun; ids are time-ordered), `ftjobs:monitor-run-claims:{tenant}:{run}` (a run is concluded once). The runs
hash holds settings.monitor_runs_kept runs at most: a run added past it moves the oldest finished ones to the store
(`archive`: `{tenant}/monitors/{id}/runs/{oldest}_{newest}.jsonl`, one segment per move, written whole before they
leave Redis) and `runs` pages over both.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any, Literal, cast

from redis import Redis
from redis.exceptions import LockError
from rq.cron import CronJob

from ftjobs.client.models import TASK_FORMATS, FileObject, JobCreate, Task
from ftjobs.client.models.monitors import Monitor, MonitorRun
from ftjobs.core import keys, webhooks
from ftjobs.core.job_writes import AtQuota, create_job
from ftjobs.core.queue import JobQueue
from ftjobs.core.records import as_text, new_id
from ftjobs.core.settings import Settings
from ftjobs.core.storage import Storage
from ftjobs.core.tenants import TenantsSource

log = logging.getLogger("ftjobs.monitors")

MONITOR_FUNC = "ftjobs.jobs.monitor.run"  # the scheduled RQ job (jobs/worker.py runs it among ftjobs' own)
MONITOR_KEY, RUN_KEY = "monitor_id", "monitor_run"  # metadata of a monitor's evaluation job
SEGMENT = re.compile(r"^(run-[0-9a-f]{20})_(run-[0-9a-f]{20})\.jsonl$")  # an archive segment: oldest_newest
ARCHIVE_LOCK_TTL_S = 60  # a dead archiver's lock on one monitor's runs lapses after this
CLAIM_TTL_S = 30 * 24 * 3600
LOWER_IS_BETTER = ("loss", "perplexity")
DEGRADED_EVENT, SKIPPED_EVENT = "monitor.degraded", "monitor.skipped"
QUOTA: Literal["max_active_jobs"] = "max_active_jobs"  # the limit a run's jobs count against (MonitorRun.reason)


def monitors_key(tenant: str) -> str:
    return f"{keys.PREFIX}:monitors:{tenant}"


def runs_key(tenant: str, monitor_id: str) -> str:
    return f"{keys.PREFIX}:monitor-runs:{tenant}:{monitor_id}"


def monitor_dir(tenant: str, monitor_id: str) -> str:
    """The monitor's folder in the store (its archived runs)."""
    return f"{tenant}/monitors/{monitor_id}"


def higher_is_better(metric: str) -> bool:
    return not any(word in metric for word in LOWER_IS_BETTER)


def max_active_jobs(settings: Settings, tenant: str) -> int | None:
    """The tenant's max_active_jobs as the tenants file says now (the worker's view; the API has its own)."""
    return TenantsSource(settings.tenants_file, settings.api_keys).current().limits(tenant).max_active_jobs


def next_time(schedule: str, after: float) -> float:
    """Unix seconds of the first time after `after` that the cron expression names, as RQ's cron computes it (the
    worker's local time); ValueError for an expression it cannot read."""
    cron = CronJob(queue_name="-", func_name=MONITOR_FUNC, cron=schedule)  # parses it: ValueError when invalid
    cron.latest_enqueue_time = datetime.fromtimestamp(after, UTC)
    return cron.get_next_enqueue_time().timestamp()


# ----------------------------------------------------------------------------- records


def save(redis: Redis, record: dict[str, Any]) -> None:
    """A monitor's record: {"monitor": Monitor, "evaluation": JobCreate template, "retraining": ... | None,
    "queue": the training queue of its jobs, "next_rq_id": its scheduled RQ job}."""
    monitor = record["monitor"]
    redis.hset(monitors_key(monitor["tenant"]), monitor["id"], json.dumps(record))


def load(redis: Redis, tenant: str, monitor_id: str) -> dict[str, Any] | None:
    raw = redis.hget(monitors_key(tenant), monitor_id)
    return json.loads(raw) if raw is not None else None


def all_records(redis: Redis, tenant: str) -> list[dict[str, Any]]:
    """Every monitor record of the tenant, newest first (ids are time-ordered)."""
    raw = cast(dict[bytes, bytes], redis.hgetall(monitors_key(tenant)))
    return [json.loads(raw[k]) for k in sorted(raw, reverse=True)]


def view(redis: Redis, record: dict[str, Any]) -> Monitor:
    """The API's Monitor: the record's monitor with its newest run."""
    monitor = Monitor.model_validate(record["monitor"])
    latest = runs(redis, monitor.tenant, monitor.id, limit=1)
    monitor.last_run = latest[0] if latest else None
    return monitor


def delete(redis: Redis, settings: Settings, tenant: str, monitor_id: str) -> bool:
    """Remove the monitor, its scheduled RQ job and its runs; False when there was none."""
    record = load(redis, tenant, monitor_id)
    if record is None:
        return False
    unschedule(redis, settings, record)
    redis.hdel(monitors_key(tenant), monitor_id)
    redis.delete(runs_key(tenant, monitor_id))
    _drop_archive(Storage(settings.storage_url), tenant, monitor_id)
    return True


def _drop_archive(storage: Storage, tenant: str, monitor_id: str) -> None:
    """Delete the monitor's archived runs; a store error is logged (the monitor is gone from Redis already)."""
    try:
        storage.delete(monitor_dir(tenant, monitor_id))
    except Exception:
        log.exception("could not delete the archived runs of monitor %s", monitor_id)


# ----------------------------------------------------------------------------- scheduling (RQ's scheduler)


def schedule_next(redis: Redis, settings: Settings, record: dict[str, Any], after: float | None = None) -> None:
    """Put the monitor's next run in RQ's ScheduledJobRegistry (validation queue) and note it in the record."""
    monitor = record["monitor"]
    due = next_time(monitor["schedule"], time.time() if after is None else after)
    rq_id = f"monitor-{monitor['id']}-{int(due)}"
    payload = {"tenant": monitor["tenant"], "monitor_id": monitor["id"], "due": due}
    queue = JobQueue(redis, settings).queue(settings.validate_queue)
    queue.enqueue_at(
        datetime.fromtimestamp(due, UTC),
        MONITOR_FUNC,
        kwargs={"payload": payload},
        job_id=rq_id,
        description=f"monitor {monitor['id']} (tenant {monitor['tenant']}) due {int(due)}",
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
    )
    monitor["next_run_at"], record["next_rq_id"] = due, rq_id
    save(redis, record)


def unschedule(redis: Redis, settings: Settings, record: dict[str, Any]) -> None:
    """Drop the monitor's waiting RQ job (a run that starts anyway finds the monitor gone, or not due)."""
    rq_id = record.get("next_rq_id")
    if rq_id:
        queue = JobQueue(redis, settings).queue(settings.validate_queue)
        queue.scheduled_job_registry.remove(rq_id, delete_job=True)


def is_due(record: dict[str, Any], due: float) -> bool:
    """A scheduled run is the monitor's current one (not one a re-created schedule replaced)."""
    return abs(float(record["monitor"].get("next_run_at") or 0) - due) < 1.0


# ----------------------------------------------------------------------------- runs


def newest_file(redis: Redis, tenant: str, filename: str) -> FileObject | None:
    """The tenant's newest dataset file named `filename` (file ids are time-ordered: newest first)."""
    high = "+"
    while True:
        ids = [as_text(m) for m in cast(list[bytes], redis.zrange(
            keys.tenant_files_key(tenant), high, "-", desc=True, bylex=True, offset=0, num=200
        ))]  # fmt: skip
        if not ids:
            return None
        for raw in redis.mget([keys.file_key(tenant, i) for i in ids]):
            if raw is not None:
                file = FileObject.model_validate_json(raw)
                if file.filename == filename and file.format is not None:
                    return file
        high = f"({ids[-1]}"


def start_run(
    redis: Redis, settings: Settings, record: dict[str, Any], trigger: str, max_active: int | None
) -> MonitorRun:
    """Start one run: an evaluation job of the monitored job on the dataset's newest file (or a failed run); at the
    tenant's `max_active` jobs a scheduled run is `skipped`, a manual one raises AtQuota and leaves no run. Past
    settings.monitor_runs_kept runs, the oldest finished ones then move to the store."""
    run = _start(redis, settings, record, trigger, max_active)
    try:
        archive(redis, settings, record["monitor"]["tenant"], run.monitor_id)
    except Exception:  # the store is unreachable: the run stands, and a later one archives (nothing left Redis)
        log.exception("could not archive the oldest runs of monitor %s", run.monitor_id)
    return run


def _start(
    redis: Redis, settings: Settings, record: dict[str, Any], trigger: str, max_active: int | None
) -> MonitorRun:
    monitor = Monitor.model_validate(record["monitor"])
    run = MonitorRun(
        id=new_id("run-"), monitor_id=monitor.id, trigger=trigger, created_at=time.time(), status="evaluating",  # type: ignore[arg-type]
        metric=monitor.metric, reference=monitor.reference,
    )  # fmt: skip
    file = newest_file(redis, monitor.tenant, monitor.dataset)
    if file is None:
        return _finish(redis, monitor.tenant, run, status="failed", error=f"no file named {monitor.dataset!r}")
    run.file_id = file.id
    task = Task(record["evaluation"]["task"])
    if file.format not in TASK_FORMATS[task]:
        return _finish(redis, monitor.tenant, run, status="failed", error=f"{file.id} has format {file.format}; "
                       f"task {task.value} needs one of: {', '.join(sorted(TASK_FORMATS[task]))}")  # fmt: skip
    metadata = {**record["evaluation"].get("metadata", {}), MONITOR_KEY: monitor.id, RUN_KEY: run.id}
    request = JobCreate.model_validate(
        {**record["evaluation"], "training_file": file.id, "validation_file": file.id, "metadata": metadata}
    )
    _add_run(redis, monitor.tenant, run)  # before the job exists: it may conclude the run very soon
    why = f"Evaluation job created by monitor {monitor.id} (run {run.id}) on {file.id}."
    try:
        run.evaluation_job_id = create_job(redis, monitor.tenant, request, record.get("queue"), why, max_active)
    except AtQuota as e:
        if trigger == "manual":  # the caller hears 429 now: a refused request leaves nothing behind
            redis.hdel(runs_key(monitor.tenant, monitor.id), run.id)
            raise
        run.reason, run.warning = QUOTA, f"evaluation not started: {e}"
        skipped = _finish(redis, monitor.tenant, run, status="skipped")
        data = {**skipped.model_dump(mode="json"), "job_id": monitor.job_id, "dataset": monitor.dataset}
        webhooks.add_event(redis, monitor.tenant, SKIPPED_EVENT, monitor.job_id, data)
        return skipped
    _add_run(redis, monitor.tenant, run)
    JobQueue(redis, settings).enqueue_validation(monitor.tenant, run.evaluation_job_id, queue=record.get("queue"))
    return run


def conclude(
    redis: Redis, settings: Settings, tenant: str, monitor_id: str, run_id: str, final: dict[str, Any]
) -> MonitorRun | None:
    """The run's decision from its evaluation's results.final: ok or degraded (then the webhook event and, with
    `retrain`, the retraining job). None when the monitor or run is gone, or the run was concluded already."""
    record, run = load(redis, tenant, monitor_id), get_run(redis, tenant, monitor_id, run_id)
    if record is None or run is None or run.status != "evaluating":
        return None
    if not redis.set(f"{keys.PREFIX}:monitor-run-claims:{tenant}:{run_id}", 1, nx=True, ex=CLAIM_TTL_S):
        return None  # another attempt of the evaluation concluded it
    monitor = Monitor.model_validate(record["monitor"])
    value = final.get(monitor.metric)
    if not isinstance(value, int | float):
        return _finish(redis, tenant, run, status="failed", error=f"the evaluation has no {monitor.metric!r}")
    run.value = float(value)
    run.drop = monitor.reference - run.value if monitor.higher_is_better else run.value - monitor.reference
    if run.drop <= monitor.threshold:
        return _finish(redis, tenant, run, status="ok")
    if monitor.retrain and record.get("retraining") and run.file_id:
        request = JobCreate.model_validate({**record["retraining"], "training_file": run.file_id})
        why = f"Retraining job created by monitor {monitor.id} (run {run.id}): {describe(run, 'degraded')}"
        try:
            run.retrain_job_id = create_job(
                redis, tenant, request, record.get("queue"), why, max_active_jobs(settings, tenant)
            )
            JobQueue(redis, settings).enqueue_validation(tenant, run.retrain_job_id, queue=record.get("queue"))
        except AtQuota as e:  # the evaluation that concludes is one of the active jobs: it counts too
            run.reason, run.warning = QUOTA, f"retraining job not started: {e}"
    finished = _finish(redis, tenant, run, status="degraded")
    data = {**finished.model_dump(mode="json"), "job_id": monitor.job_id, "dataset": monitor.dataset}
    webhooks.add_event(redis, tenant, DEGRADED_EVENT, run.evaluation_job_id or "", data)
    return finished


def describe(run: MonitorRun, status: str | None = None) -> str:
    """One line for an event: the metric, what it was, what it is, the decision."""
    status = status or run.status
    what = ""
    if run.value is not None:
        what = f": {run.metric} {run.value:.4g} vs {run.reference:.4g} (drop {run.drop:.4g})"
    retrain = f"; retraining job {run.retrain_job_id}" if run.retrain_job_id else ""
    warning = f"; {run.warning}" if run.warning else ""
    return f"monitor {run.monitor_id} run {run.id}: {status}{what}{retrain}{warning}"


def get_run(redis: Redis, tenant: str, monitor_id: str, run_id: str) -> MonitorRun | None:
    raw = redis.hget(runs_key(tenant, monitor_id), run_id)
    return MonitorRun.model_validate_json(raw) if raw is not None else None


def runs(
    redis: Redis,
    tenant: str,
    monitor_id: str,
    after: str | None = None,
    limit: int = 20,
    storage: Storage | None = None,
) -> list[MonitorRun]:
    """The monitor's runs, newest first, from below `after`: Redis's and, with `storage`, the archived ones; a run
    whose evaluation job failed or was cancelled reads `failed` (its job never reached the conclusion)."""
    raw = {as_text(k): v for k, v in cast(dict[bytes, bytes], redis.hgetall(runs_key(tenant, monitor_id))).items()}
    ids = sorted((i for i in raw if after is None or i < after), reverse=True)[:limit]
    page = {i: _resolved(redis, tenant, MonitorRun.model_validate_json(raw[i])) for i in ids}
    if storage is not None:  # Redis read first: a run archived since is in the store (segments are written first)
        _add_archived(storage, tenant, monitor_id, after, limit, page)
    return [page[i] for i in sorted(page, reverse=True)[:limit]]


def _resolved(redis: Redis, tenant: str, run: MonitorRun) -> MonitorRun:
    """The run as it reads: `evaluating` whose evaluation job failed or was cancelled is `failed`."""
    if run.status == "evaluating" and run.evaluation_job_id:
        status = redis.hget(keys.job_key(tenant, run.evaluation_job_id), str(keys.JobField.status))
        if status is not None and json.loads(status) in ("failed", "cancelled"):
            run.status, run.error = "failed", f"evaluation job {run.evaluation_job_id} {json.loads(status)}"
    return run


def _add_archived(
    storage: Storage, tenant: str, monitor_id: str, after: str | None, limit: int, page: dict[str, MonitorRun]
) -> None:
    """Add to `page` the archived runs below `after` that are among the newest `limit` of both (Redis's copy of a
    run wins); segments may overlap (a run that changed while archived is archived again later)."""
    folder = f"{monitor_dir(tenant, monitor_id)}/runs"
    found = [(m[2], m[1], name) for name in storage.names(folder) if (m := SEGMENT.match(name))]
    for newest, oldest, name in sorted(found, reverse=True):  # newest segments first
        if after is not None and oldest >= after:
            continue
        if len(page) >= limit and newest < sorted(page, reverse=True)[limit - 1]:
            return  # this segment and the rest hold only runs older than the page's last
        try:
            with storage.open(f"{folder}/{name}") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:  # the monitor is being deleted
            continue
        for line in lines:
            run = MonitorRun.model_validate_json(line)
            if (after is None or run.id < after) and run.id not in page:
                page[run.id] = run


# DROP_ARCHIVED: the archived runs leave Redis, each only if its record is still the one archived (else it stays,
# and a later archive takes it as it is then). KEYS[1] = runs hash; ARGV = run id, its record, run id, ...
# Returns the ids removed.
DROP_ARCHIVED = """
local dropped = {}
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    table.insert(dropped, ARGV[i])
  end
end
return dropped
"""


def archive(redis: Redis, settings: Settings, tenant: str, monitor_id: str) -> int:
    """Past settings.monitor_runs_kept runs in Redis, move the oldest finished ones to the store, down to 90% of it
    (a segment is about a tenth of the bound, not one run); returns how many left Redis. Runs still evaluating
    stay. One archiver per monitor at a time (a lock; a second one skips: the next run archives)."""
    key, kept = runs_key(tenant, monitor_id), settings.monitor_runs_kept
    if cast(int, redis.hlen(key)) <= kept:
        return 0
    lock = redis.lock(f"{keys.PREFIX}:monitor-runs-lock:{tenant}:{monitor_id}", ARCHIVE_LOCK_TTL_S, blocking=False)
    if not lock.acquire():
        return 0
    try:
        raw = {as_text(k): v for k, v in cast(dict[bytes, bytes], redis.hgetall(key)).items()}
        excess = len(raw) - (kept - kept // 10)
        moving: list[tuple[str, bytes, MonitorRun]] = []
        for run_id in sorted(raw):
            run = _resolved(redis, tenant, MonitorRun.model_validate_json(raw[run_id]))
            if run.status != "evaluating" and len(moving) < excess:
                moving.append((run_id, raw[run_id], run))
        if not moving:
            return 0
        storage = Storage(settings.storage_url)
        path = f"{monitor_dir(tenant, monitor_id)}/runs/{moving[0][0]}_{moving[-1][0]}.jsonl"
        storage.write_bytes(path, "".join(r.model_dump_json() + "\n" for _, _, r in moving).encode())  # whole first
        args = [x for run_id, value, _ in moving for x in (run_id, value)]
        dropped = {as_text(i) for i in cast(list[bytes], redis.eval(DROP_ARCHIVED, 1, key, *args))}
        if len(dropped) < len(moving):  # some changed meanwhile: the segment keeps only what left Redis
            left = [r.model_dump_json() + "\n" for run_id, _, r in moving if run_id in dropped]
            if left:
                storage.write_bytes(path, "".join(left).encode())
            else:
                storage.delete(path)
        if not redis.hexists(monitors_key(tenant), monitor_id):  # deleted meanwhile: no segment outlives it
            _drop_archive(storage, tenant, monitor_id)
        return len(dropped)
    finally:
        try:
            lock.release()
        except LockError:  # it lapsed: another archiver may have started, which the DROP_ARCHIVED check allows
            pass


def _add_run(redis: Redis, tenant: str, run: MonitorRun) -> None:
    redis.hset(runs_key(tenant, run.monitor_id), run.id, run.model_dump_json())


def _finish(redis: Redis, tenant: str, run: MonitorRun, status: str, error: str | None = None) -> MonitorRun:
    run.status, run.error, run.finished_at = status, error, time.time()  # type: ignore[assignment]
    _add_run(redis, tenant, run)
    return run
