#!/usr/bin/env bash
# The declared lower bounds, tested: a fresh venv with the oldest release of every dependency
# that pyproject.toml allows (uv's lowest-direct resolution; for the compiled packages over
# wheels for this Python: a floor with no wheel here, e.g. numpy 1.20 on Python 3.11, gives way
# to its oldest release that has one), then the fast test tier. Prints the versions installed, the pass counts and the time.
#
#   scripts/oldest-deps.sh [VENV_DIR] [pytest args...]     (default: a temporary folder)
#
# Needs the package index (torch's old releases are not on this machine's disk) and the MNIST
# files (BNSWEEP_DATA, or the download docs/how-to/data.md describes).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$(mktemp -d)/oldest}
shift || true
start=$(date +%s)
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
pip install -q uv
# this machine caps torch at the release on its disk (a pip constraint file); the oldest
# releases come from the index, so no cap applies here
export PIP_CONSTRAINT=
# wheels only for the compiled packages (an old numpy's source does not build on a newer
# Python); pure-Python sources build (Hydra's antlr4 runtime is published as source only)
no_build=()
for p in numpy scipy matplotlib pillow torch torchvision protobuf contourpy kiwisolver; do
    no_build+=(--only-binary "$p")
done
uv pip install --python "$venv/bin/python" --resolution lowest-direct "${no_build[@]}" \
    --index-strategy unsafe-best-match -e ".[test,joblib,slurm]"
echo "== installed (the oldest the declared floors allow on $(python -V))"
uv pip list --python "$venv/bin/python" | grep -Ei \
    '^(torch|torchvision|pytorch-lightning|torchmetrics|hydra-core|omegaconf|tensorboard|matplotlib|scipy|numpy|pillow|protobuf|lightning-utilities|hydra-joblib-launcher|hydra-submitit-launcher|submitit|joblib) '
echo "== tests: pytest -m 'not slow' $*"
status=0
pytest -q -m "not slow" -p no:cacheprovider "$@" || status=$?
echo "== oldest-deps: pytest exit $status after $(( $(date +%s) - start )) s (install included)"
exit $status
