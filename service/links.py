"""OpenAPI links: which response feeds which operation (an upload's id -> a job's training_file, a job's id -> its
events ...). They document the API's flow and let a stateful fuzzer (schemathesis) chain real ids."""

from __future__ import annotations

from typing import Any

FILE_ID = {"file_id": "$response.body#/id"}
JOB_ID = {"job_id": "$response.body#/id"}
FIRST_JOB = {"job_id": "$response.body#/data/0/id"}
SAME_JOB = {"job_id": "$request.path.job_id"}

# What a job can be followed with, from any response whose body is a Job.
JOB_FOLLOW_UPS = {
    "GetJob": ("jobs-get_job", JOB_ID, "The job's current state."),
    "CancelJob": ("jobs-cancel_job", JOB_ID, "Cancel the job."),
    "PauseJob": ("jobs-pause_job", JOB_ID, "Pause the job (it checkpoints and frees its worker)."),
    "ResumeJob": ("jobs-resume_job", JOB_ID, "Resume the paused job from its checkpoint."),
    "ListEvents": ("jobs-list_events", JOB_ID, "The job's events."),
    "ListMetrics": ("jobs-list_metrics", JOB_ID, "The job's metric points."),
    "ListArtifacts": ("artifacts-list_artifacts", JOB_ID, "The job's artifacts (once it succeeded)."),
}

# (operationId, status) -> link name -> (target operationId, parameters or a request body, description).
LINKS: dict[tuple[str, str], dict[str, tuple[str, dict[str, Any], str]]] = {
    ("files-upload_file", "201"): {
        "GetFile": ("files-get_file", FILE_ID, "The uploaded file's metadata."),
        "GetFileProfile": ("files-get_file_profile", FILE_ID, "The uploaded file's profile."),
        "CreateJob": ("jobs-create_job", {"body": {"training_file": "$response.body#/id"}}, "Train on the file."),
    },
    ("files-list_files", "200"): {
        "GetFile": ("files-get_file", {"file_id": "$response.body#/data/0/id"}, "The first listed file."),
    },
    ("jobs-create_job", "201"): JOB_FOLLOW_UPS,
    ("jobs-create_job", "200"): JOB_FOLLOW_UPS,  # an idempotent replay returns the same job
    ("jobs-get_job", "200"): {k: v for k, v in JOB_FOLLOW_UPS.items() if k != "GetJob"},
    ("jobs-cancel_job", "200"): {k: v for k, v in JOB_FOLLOW_UPS.items() if k != "CancelJob"},
    ("jobs-pause_job", "200"): {k: v for k, v in JOB_FOLLOW_UPS.items() if k != "PauseJob"},
    ("jobs-resume_job", "200"): {k: v for k, v in JOB_FOLLOW_UPS.items() if k != "ResumeJob"},
    ("jobs-list_jobs", "200"): {
        "GetJob": ("jobs-get_job", FIRST_JOB, "The first listed job."),
        "ListEvents": ("jobs-list_events", FIRST_JOB, "The first listed job's events."),
        "ListArtifacts": ("artifacts-list_artifacts", FIRST_JOB, "The first listed job's artifacts."),
    },
    ("jobs-list_events", "200"): {
        "NextEvents": (
            "jobs-list_events",
            {**SAME_JOB, "after": "$response.body#/last_id"},
            "The next page of events.",
        ),
    },
    ("artifacts-list_artifacts", "200"): {
        "DownloadArtifact": (
            "artifacts-download_artifact",
            {**SAME_JOB, "name": "$response.body#/data/0/name"},
            "Download the first listed artifact.",
        ),
    },
}


def add_links(spec: dict[str, Any]) -> dict[str, Any]:
    """Write LINKS into the spec's responses; a link naming an operation or status the spec lacks is an error."""
    operations = {
        op["operationId"]: op
        for methods in spec.get("paths", {}).values()
        for op in methods.values()
        if "operationId" in op
    }
    for (source, status), links in LINKS.items():
        if source not in operations or status not in operations[source].get("responses", {}):
            raise ValueError(f"OpenAPI link source {source} {status} is not in the spec")
        written: dict[str, Any] = {}
        for name, (target, values, description) in links.items():
            if target not in operations:
                raise ValueError(f"OpenAPI link {source} -> {target}: no such operation")
            link: dict[str, Any] = {"operationId": target, "description": description}
            if "body" in values:
                link["requestBody"] = values["body"]
            else:
                link["parameters"] = dict(values)
            written[name] = link
        operations[source]["responses"][status]["links"] = written
    return spec
