# Sourced by the other scripts: make (or reuse) .venv with envlock and the given extras installed.
# Usage: . scripts/_venv.sh EXTRAS   (e.g. "torch" or "test,torch")
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ENVLOCK_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
extras="$1"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip_args=(--quiet --disable-pip-version-check)
# The CPU build of torch 2.13.0 lies here on the project's machines; any other torch pulls a multi-GB CUDA build.
if [ -d /opt/wheels ]; then pip_args+=(--find-links /opt/wheels); fi
stamp="$venv/.envlock-installed-$extras"
# Again when the C size check's source changed (the editable install built it in place, beside its source).
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "$root/setup.py" -nt "$stamp" ] \
    || [ "$root/envlock/_sizecheck.c" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install "${pip_args[@]}" -e "$root[$extras]" 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -c "import envlock" && touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
