#!/usr/bin/env bash
# Check that the lowest versions setup.cfg accepts (its install_requires floors) really work:
# a fresh venv gets every dependency pinned to its floor (`pkg>=X` -> `pkg==X`), torch from
# constraints-cpu.txt (the CPU build; a CUDA torch of the floor version would pull gigabytes of
# CUDA libraries), then a smoke subset of the tests runs offline. Not part of CI: it downloads
# from PyPI and takes several minutes. Usage: scripts/check_floors.sh [VENV_DIR] [PYTEST_ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$(mktemp -d)/floors-venv}
shift || true
floors=$(mktemp)
# install_requires lines of setup.cfg: '    name>=X[,<Y]' -> 'name==X' (torch comes from the constraints file)
awk '/^install_requires =/{f=1; next} f && /^[^ \t]/{f=0} f && NF' setup.cfg \
  | sed -E 's/^[[:space:]]*([A-Za-z0-9_.-]+)>=([^,;[:space:]]+).*/\1==\2/' | grep -v '^torch==' > "$floors"
echo "floors:"; sed 's/^/  /' "$floors"
python3 -m venv "$venv"
. "$venv/bin/activate"
pip install -q -c constraints-cpu.txt -r "$floors" -e ".[test]"
pip list 2>/dev/null | grep -iE '^(torch|transformers|accelerate|datasets|huggingface[-_]hub|safetensors|pillow|pyyaml|tqdm|tensorboardx|numpy|captum|matplotlib) '
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ $# -eq 0 ]; then
  set -- tests/test_config.py tests/commands/test_cli.py tests/test_attack.py tests/test_model.py tests/data/test_images.py tests/test_train.py tests/test_hub.py
fi
python -m pytest -q -p no:cacheprovider -k "not two_cpu_ranks" "$@"
