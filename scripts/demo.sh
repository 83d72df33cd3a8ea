#!/usr/bin/env bash
# Set up envlock in .venv, capture this machine into envlock.lock, then check and summarise the lock.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" torch
cd "$root"
envlock capture -o "${1:-envlock.lock}"
envlock show "${1:-envlock.lock}"
