"""`envlock.mlflow.log()`: attach the lock, and the verify report of this process, to the active MLflow run.

Optional (`pip install 'envlock[mlflow]'`): mlflow is imported only when `log` is called.

Inside `with mlflow.start_run():` it logs the artifacts `envlock/envlock.lock` (the lock as it is on disk) and
`envlock/verify.json` (the report, as `envlock verify --json` prints it), and the tags `envlock.lock_sha256`,
`envlock.target`, `envlock.ok` ("true"/"false") and `envlock.verdict` (the report's first line). Without an
active run it starts none and raises `envlock.UsageError`.
"""

from __future__ import annotations

import os

from envlock.errors import EnvironmentUnavailable, UsageError
from envlock.findings import Report
from envlock.lockfile import default_lock_path, load, read_text
from envlock.report import render_json, render_text
from envlock.verifying import VerifyOptions, examine

ARTIFACT_DIR = "envlock"


def tags_for(report: Report | None, content_hash: str) -> dict[str, str]:
    """The run tags envlock sets (the same keys for MLflow tags and W&B config)."""
    tags = {"envlock.lock_sha256": content_hash}
    if report is not None:
        tags.update({"envlock.target": report.target, "envlock.ok": "true" if report.ok else "false",
                     "envlock.verdict": render_text(report)[0]})
    return tags


def log(lock: str | os.PathLike[str] | None = None, *, verify: bool = True) -> Report | None:
    """Log the lock (and, with `verify`, this process's report against it) to the active MLflow run; the report.

    The report is of a full verify (torch settings as the job has them now); a mismatch is logged, not raised —
    call `envlock.check()` to stop the job.
    """
    try:
        import mlflow
    except ImportError:
        raise EnvironmentUnavailable("mlflow is not installed: pip install 'envlock[mlflow]'") from None
    run = mlflow.active_run()
    if run is None:
        raise UsageError("no active MLflow run: call envlock.mlflow.log() inside `with mlflow.start_run():`")
    path = lock if lock is not None else default_lock_path()
    loaded, _ = load(path)
    report = examine(path, VerifyOptions()).report if verify else None
    mlflow.log_text(read_text(path), f"{ARTIFACT_DIR}/envlock.lock")
    if report is not None:
        mlflow.log_text(render_json(report) + "\n", f"{ARTIFACT_DIR}/verify.json")
    mlflow.set_tags(tags_for(report, loaded.lock.content_hash))
    return report
