"""`envlock.wandb.log()`: put the lock, and the verify report of this process, into the active W&B run.

Optional (`pip install 'envlock[wandb]'`): wandb is imported only when `log` is called.

It sets the run config key `envlock` (`lock_sha256`, `target`, `ok`, `verdict`) and logs an artifact of type
`envlock-lock` holding `envlock.lock` and `verify.json`. Without an active run (`wandb.init()`) it starts none
and raises `envlock.UsageError`. Works the same offline (`WANDB_MODE=offline`).
"""

from __future__ import annotations

import os
from typing import Any

from envlock.errors import EnvironmentUnavailable, UsageError
from envlock.findings import Report
from envlock.lockfile import default_lock_path, load, read_text
from envlock.mlflow import tags_for
from envlock.report import render_json
from envlock.verifying import VerifyOptions, examine

ARTIFACT_TYPE = "envlock-lock"


def log(lock: str | os.PathLike[str] | None = None, *, verify: bool = True, run: Any = None) -> Report | None:
    """Log the lock (and, with `verify`, this process's report) to `run` or the active W&B run; the report."""
    try:
        import wandb
    except ImportError:
        raise EnvironmentUnavailable("wandb is not installed: pip install 'envlock[wandb]'") from None
    run = run if run is not None else wandb.run
    if run is None:
        raise UsageError("no active W&B run: call envlock.wandb.log() after wandb.init()")
    path = lock if lock is not None else default_lock_path()
    loaded, _ = load(path)
    report = examine(path, VerifyOptions()).report if verify else None
    tags = tags_for(report, loaded.lock.content_hash)
    run.config.update({"envlock": {key.removeprefix("envlock."): value for key, value in tags.items()}},
                      allow_val_change=True)
    artifact = wandb.Artifact(f"envlock-{loaded.lock.content_hash[7:19]}", type=ARTIFACT_TYPE,
                              metadata={"lock_sha256": loaded.lock.content_hash})
    with artifact.new_file("envlock.lock", encoding="utf-8") as handle:
        handle.write(read_text(path))
    if report is not None:
        with artifact.new_file("verify.json", encoding="utf-8") as handle:
            handle.write(render_json(report) + "\n")
    run.log_artifact(artifact)
    return report
