"""Image references and tags: closed grammars, matched in full, before anything reaches the Docker Engine."""

from __future__ import annotations

import re

from envlock.errors import UsageError

# Docker's reference grammar (distribution/reference), restricted: lower-case path components, optional
# registry host[:port], optional tag, optional digest.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,62}[a-zA-Z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?/)"
_NAME = rf"{_HOST}?{_COMPONENT}(?:/{_COMPONENT}){{0,8}}"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"
TAG_REF = re.compile(rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?")
BASE_REF = re.compile(rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?")
IMAGE_ID = re.compile(rf"(?P<digest>{_DIGEST})")


def check_tag(tag: str) -> tuple[str, str]:
    """(repository, tag) of a `--tag` value; refuses anything outside the grammar (newlines, upper case...)."""
    match = TAG_REF.fullmatch(tag)
    if not match or len(tag) > 255:
        raise UsageError(f"--tag {tag!r}: not a valid image tag (expected e.g. team/train:2024-06, lower case)")
    return match.group("name"), match.group("tag") or "latest"


def check_base(base: str, *, allow_unpinned: bool = False) -> str:
    """The base reference, pinned by digest or a local image ID; a tag alone only with `allow_unpinned`."""
    if IMAGE_ID.fullmatch(base):
        return base
    match = BASE_REF.fullmatch(base)
    if not match or len(base) > 512:
        raise UsageError(f"--base {base!r}: not a valid image reference")
    if not match.group("digest") and not allow_unpinned:
        raise UsageError(
            f"--base {base}: pin it by digest (name@sha256:...) or give a local image ID, so the base cannot move "
            "under the lock; --allow-unpinned-base accepts a tag"
        )
    return base
