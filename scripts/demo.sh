#!/usr/bin/env bash
# Set up envlock in .venv, capture this machine into envlock.lock, summarise it, then verify the machine against it.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" torch
cd "$root"
lock="${1:-envlock.lock}"
envlock capture -o "$lock"
envlock show "$lock"
envlock verify "$lock"
