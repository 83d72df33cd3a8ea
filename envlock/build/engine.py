"""Talking to the Docker Engine through the docker SDK: connect, check the base, build from a stream, run."""

from __future__ import annotations

import gc
import json
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from envlock.build.steps import PREFIX as STEP_PREFIX
from envlock.errors import BuildError, EnvironmentUnavailable, UsageError

_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f\x9b]")
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_NOISE = re.compile(r"^\s*(---> |Removing intermediate container )")  # the builder's bookkeeping
BUILD_DEADLINE = 3600.0


def clean(text: str) -> str:
    """Daemon and container output with terminal escapes and control characters removed."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def connect(timeout: int = 120) -> Any:
    """A docker APIClient that answered a ping; exit 3 with a hint when the daemon cannot be reached."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        raise EnvironmentUnavailable("the docker SDK is not installed (pip install docker)") from None
    problem = ""
    with warnings.catch_warnings():
        # docker-py leaves the socket of a failed unix-socket connect unclosed (docker/transport/unixconn.py);
        # it is collected here, inside this block, instead of warning later in the caller.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(version="auto", timeout=timeout)
            client.api.ping()
        except DockerException as exc:
            problem = f"cannot reach the Docker Engine ({_short(exc)}); is dockerd running? check DOCKER_HOST"
        except Exception as exc:  # requests' connection errors are not DockerExceptions
            problem = f"cannot reach the Docker Engine ({_short(exc)}); check DOCKER_HOST"
        if problem:
            gc.collect()
    if problem:
        raise EnvironmentUnavailable(problem)
    return client


def _short(exc: BaseException) -> str:
    text = clean(str(exc)).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:200]


def image_id(client: Any, reference: str) -> str:
    """The local image ID of `reference`; exit 2 when it is not present (no registry is consulted)."""
    from docker.errors import ImageNotFound

    try:
        return str(client.api.inspect_image(reference)["Id"])
    except ImageNotFound:
        raise UsageError(f"base image {reference} is not present locally (a build never pulls)") from None


def run_in(client: Any, image: str, command: list[str], *, timeout: float = 600.0) -> tuple[int, str]:
    """(exit code, output) of `command` in a throwaway container of `image`, without network."""
    container = client.containers.create(image, command=command, entrypoint=[], network_disabled=True)
    try:
        container.start()
        status = container.wait(timeout=timeout)
        output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        return int(status.get("StatusCode", 1)), clean(output)
    finally:
        container.remove(force=True)


def python_version(client: Any, image: str) -> str:
    """The version of `python3` in an image."""
    from docker.errors import APIError

    try:
        code, output = run_in(client, image, ["python3", "-c", "import platform; print(platform.python_version())"])
    except APIError as exc:  # the engine refuses to start a missing executable
        code, output = 127, clean(str(exc.explanation or exc))
    if code != 0:
        raise UsageError(f"base image {image} has no working python3 (exit {code}): {output.strip()[:200]}")
    return output.strip().splitlines()[-1]


@dataclass(frozen=True)
class StreamResult:
    """What a build stream ended with."""

    image_id: str
    log: list[str]


def follow(chunks: Iterable[dict[str, Any]], echo: Callable[[str], None], *, deadline: float) -> StreamResult:
    """Consume a decoded build stream: print progress, fail on error chunks, return the image ID."""
    log: list[str] = []
    step = ""
    image = ""
    pending = ""
    told = ""  # the one line an envlock build step printed before failing (build/steps.py)
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise BuildError(f"the build ran past its deadline; last step: {step or 'none'}")
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail", {}) if isinstance(chunk.get("errorDetail"), dict) else {}
            message = clean(str(detail.get("message") or chunk.get("error") or "unknown error")).strip()
            where = f" at {step}" if step else ""
            last = told or (message.splitlines()[-1] if message else "error")
            raise BuildError(f"the build failed{where}: {last}")
        if "message" in chunk and len(chunk) == 1:  # some engines stream a failure this way (docker-py #3108)
            raise BuildError(f"the build failed: {clean(str(chunk['message'])).strip()[:300]}")
        aux = chunk.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            image = aux["ID"]
        text = chunk.get("stream")
        if isinstance(text, str):
            pending += clean(text)
            *lines, pending = pending.split("\n")
            for line in lines:
                if not line.strip():
                    continue
                log.append(line)
                match = _STEP.match(line.strip())
                if match:
                    step = f"step {match.group(1)}/{match.group(2)} ({match.group(3)[:80]})"
                    told = ""
                elif line.startswith(STEP_PREFIX):
                    told = line[len(STEP_PREFIX):].strip()[:400]
                if not _NOISE.match(line):
                    echo(line)
                found = re.match(r"^Successfully built ([0-9a-f]{12,64})$", line.strip())
                if found and not image:
                    image = found.group(1)
    if pending.strip():
        log.append(pending)
        echo(pending)
    if not image:
        raise BuildError("the build stream ended without an image ID" + (f" (last step: {step})" if step else ""))
    return StreamResult(image_id=image, log=log[-50:])


def _drain(chunks: Any, deadline: float) -> None:
    """Read a failed build's stream to its end, so the connection is released rather than left open."""
    for _ in chunks:
        if time.monotonic() > deadline:
            break
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def build_image(client: Any, context: IO[bytes], labels: dict[str, str], echo: Callable[[str], None],
                *, no_cache: bool = False) -> str:
    """Build from a context tar through the classic builder; the full image ID."""
    from docker.errors import APIError, DockerException

    deadline = time.monotonic() + BUILD_DEADLINE
    try:
        chunks = client.api.build(
            fileobj=context, custom_context=True, rm=True, forcerm=True, pull=False, nocache=no_cache,
            decode=True, labels=labels, use_config_proxy=False, buildargs={},
        )
        try:
            result = follow(chunks, echo, deadline=deadline)
        except BuildError:
            _drain(chunks, deadline)
            raise
    except APIError as exc:
        explanation = clean(str(exc.explanation or exc)).strip()
        raise BuildError(f"the Docker Engine refused the build: {explanation[:300]}") from None
    except DockerException as exc:
        raise EnvironmentUnavailable(f"lost the Docker Engine during the build ({_short(exc)})") from None
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise EnvironmentUnavailable(f"lost the Docker Engine during the build ({_short(exc)})") from None
    return image_id(client, result.image_id)
