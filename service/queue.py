"""The only module that talks to RQ: enqueue a job's file validation by dotted path, cancel it while queued."""

from __future__ import annotations

import logging

from redis import Redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQJobStatus
from rq.serializers import JSONSerializer

from ftjobs.client.models import QueuePayload
from ftjobs.service.config import Settings

log = logging.getLogger("ftjobs.service")

VALIDATE_FUNC = "ftjobs.jobs.validate.run"  # the job's validating_files phase (attempt 0), imported by the worker only;
# it enqueues the training attempt (jobs.train.run) itself: the API never imports `jobs`
VALIDATE_TIMEOUT_S = 3600
RESULT_TTL_S = 24 * 3600
FAILURE_TTL_S = 7 * 24 * 3600


def rq_job_id(job_id: str, attempt: int) -> str:
    return f"{job_id}-{attempt}"


class JobQueue:
    """Hands new jobs to the workers: validation on settings.validate_queue, which queues the training attempt on
    settings.queue (the hardware class); payloads cross as JSON, never pickle."""

    def __init__(self, connection: Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        self.validate_queue = Queue(settings.validate_queue, connection=connection, serializer=JSONSerializer)

    def enqueue_validation(self, tenant: str, job_id: str) -> str:
        """Enqueue `jobs.validate.run` (attempt 0); it hands the job to the training queue `settings.queue`."""
        payload = QueuePayload(job_id=job_id, tenant=tenant, attempt=0, queue=self.settings.queue)
        job = self.validate_queue.enqueue_call(
            VALIDATE_FUNC,
            kwargs={"payload": payload.model_dump()},
            job_id=rq_job_id(job_id, 0),
            timeout=VALIDATE_TIMEOUT_S,
            result_ttl=RESULT_TTL_S,
            failure_ttl=FAILURE_TTL_S,
            description=f"validate files of {job_id} (tenant {tenant})",
        )
        return str(job.id)

    def cancel(self, job_id: str, attempt: int) -> None:
        """Cancel the attempt's RQ job if it has not started (a running one stops via cancel_requested)."""
        try:
            job = RQJob.fetch(
                rq_job_id(job_id, attempt), connection=self.connection, serializer=JSONSerializer
            )
            if job.get_status() in (RQJobStatus.QUEUED, RQJobStatus.DEFERRED, RQJobStatus.SCHEDULED):
                job.cancel()
        except (NoSuchJobError, InvalidJobOperation) as exc:
            log.info("rq job %s not cancelled: %s", rq_job_id(job_id, attempt), exc)
