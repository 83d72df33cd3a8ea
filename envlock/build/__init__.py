"""`envlock build`: a container image that installs exactly the locked wheels, carries the lock, and is checked.

Steps: load and check the lock and the options (nothing is written on bad input) → gather and check the wheels →
render the context (Dockerfile, requirements with hashes, the lock, the wheels) → pack it deterministically →
(with `--context DIR`: write it and stop) → check the base's Python → build through the Docker Engine →
run `envlock verify` inside the new image → tag it only when that passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envlock._version import __version__
from envlock.build.context import check_context_folder, pack_context, write_context
from envlock.build.engine import build_image, connect, image_id, python_version, run_in
from envlock.build.refs import check_base, check_tag
from envlock.build.render import (
    PLAN_FILE,
    STEPS_FILE,
    Requirement,
    lock_env,
    render_dockerfile,
    render_plan,
    render_requirements,
)
from envlock.build.wheels import default_cache, gather
from envlock.errors import BuildError, UsageError
from envlock.lockfile import load, read_text

__all__ = ["BuildError", "BuildResult", "build"]


@dataclass(frozen=True)
class BuildResult:
    """What a build produced."""
    context_sha256: str
    requirements: int
    context_dir: str = ""
    image_id: str = ""
    tag: str = ""
    verify_exit: int = 0
    verify_output: str = ""


def build(
    lock_path: Path,
    *,
    tag: str | None,
    base: str | None,
    context_dir: Path | None = None,
    wheelhouses: tuple[Path, ...] = (),
    allow_unpinned_base: bool = False,
    no_cache: bool = False,
    echo: Callable[[str], None] = print,
    progress: bool = False,
) -> BuildResult:
    """Build (or, with `context_dir`, only write) the image of the lock at `lock_path`; `progress` draws the wheel
    checks on stderr (envlock.progress)."""
    text = read_text(lock_path)
    lock, _ = load(lock_path)
    if base is None:
        raise UsageError("a build needs --base (the image to start from, pinned by digest or a local image ID)")
    if context_dir is None and tag is None:
        raise UsageError("a build needs --tag (or --context DIR to write the context only)")
    if context_dir is not None:
        check_context_folder(context_dir)
    repository, tag_name = check_tag(tag) if tag is not None else ("", "")
    base_ref = check_base(base, allow_unpinned=allow_unpinned_base)
    env = lock_env({k: (v.set, v.value) for k, v in lock.floats.env.items()}, str(lock_path))
    for folder in wheelhouses:
        if not folder.is_dir():
            raise UsageError(f"--wheelhouse {folder}: no such folder")

    gathered = gather(lock, list(wheelhouses), default_cache(), progress=progress)
    wheels = gathered.wheels
    requirements = [Requirement(w.name, w.version, w.path.name, w.sha256) for w in wheels]
    lock_sha = lock.lock.content_hash.removeprefix("sha256:")
    seeded = bool(gathered.seeded)
    origins = any(package.source != "index" for package in lock.packages.values())
    files = {
        "Dockerfile": render_dockerfile(base_ref, env, lock_sha256=lock_sha, seeded=seeded, origins=origins).encode(),
        "requirements.txt": render_requirements(requirements).encode(),
        "envlock.lock": text.encode("utf-8"),
    }
    if seeded or origins:  # the steps that make the venv record what the lock records (see build/steps.py)
        files[STEPS_FILE] = (Path(__file__).parent / "steps.py").read_bytes()
        files[PLAN_FILE] = render_plan(dict(lock.packages), gathered.seeded).encode()
    wheel_files = {f"wheels/{w.path.name}": w.path for w in wheels}
    if context_dir is not None:
        archive, context_sha = pack_context(files, wheel_files)
        archive.close()
        write_context(context_dir, files, wheel_files)
        return BuildResult(context_sha256=context_sha, requirements=len(requirements), context_dir=str(context_dir))

    client = connect()
    try:
        base_id = image_id(client, base_ref)
        found = python_version(client, base_id)
        if found != lock.python.version:
            raise UsageError(
                f"base image {base_ref} has Python {found}, the lock was captured with {lock.python.version}: "
                "choose a base with the locked Python"
            )
        archive, context_sha = pack_context(files, wheel_files)
        labels = {
            "dev.envlock.version": __version__,
            "dev.envlock.lock.sha256": lock_sha,
            "dev.envlock.context.sha256": context_sha,
            "dev.envlock.python": lock.python.version,
            "org.opencontainers.image.base.name": base_ref,
            "org.opencontainers.image.base.digest": base_id,
        }
        try:
            new_id = build_image(client, archive, labels, echo, no_cache=no_cache)
        finally:
            archive.close()
        code, output = run_in(client, new_id, ["/opt/venv/bin/envlock", "verify"])
        if code == 0:
            client.api.tag(new_id, repository, tag_name)
    finally:
        client.close()
    return BuildResult(
        context_sha256=context_sha, requirements=len(requirements), image_id=new_id,
        tag=f"{repository}:{tag_name}" if code == 0 else "", verify_exit=code, verify_output=output,
    )
