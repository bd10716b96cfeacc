#!/usr/bin/env bash
# Creates one virtual environment per benchmark peer under bench/ (gitignored: bench/.venv-*/).
# Idempotent: an environment whose requirements are already installed is left alone.
# Packages come from PyPI only; torch==2.13.0 (the CPU wheel this machine's pip finds) is
# installed first wherever a peer needs torch, so no other torch build is ever pulled.
# None of this is a Wacht dependency: the serving environment (.venv) is never touched.
#
#   bash bench/peers/setup.sh            # all environments
#   bash bench/peers/setup.sh naive      # only some: bench naive pytriton infinity
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH="torch==2.13.0"
# Wacht's stubs (wacht/v1) are generated with protobuf 7 gencode: the runtime must be >= 7.35.1.
GRPC="grpcio==1.85.3 googleapis-common-protos>=1.63"
PROTOBUF="protobuf==7.36.2"

# name -> requirements installed after torch (when the name is in NEEDS_TORCH)
declare -A REQS=(
  [bench]="$GRPC tritonclient[grpc]==2.73.0 aiohttp==3.* numpy<2 psutil matplotlib"
  [naive]="$GRPC $PROTOBUF transformers==4.57.6 numpy<2 psutil"
  [pytriton]="nvidia-pytriton==0.7.0 numpy<2 onnxruntime==1.32.0 tokenizers==0.22.2"
  [infinity]="infinity-emb[server,optimum]==0.0.78 numpy<2"
)
NEEDS_TORCH=" naive infinity "
# Installed last, over a declared pin: tritonclient 2.73 asks for protobuf<7, but its generated
# Triton stubs (protobuf 6 gencode) load and run under the protobuf 7 runtime, which Wacht's
# stubs need in the same client process.
declare -A OVERRIDES=([bench]="$PROTOBUF")

envs=("$@")
[ ${#envs[@]} -eq 0 ] && envs=(bench naive pytriton infinity)

for name in "${envs[@]}"; do
  [ -n "${REQS[$name]+x}" ] || { echo "unknown environment: $name" >&2; exit 2; }
  venv="$BENCH/.venv-$name"
  stamp="$venv/.installed"
  want="$TORCH | ${REQS[$name]} | ${OVERRIDES[$name]:-}"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "== $name: up to date ($venv)"
    continue
  fi
  echo "== $name: installing into $venv"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  if [[ "$NEEDS_TORCH" == *" $name "* ]]; then
    "$venv/bin/python" -m pip install -q "$TORCH"
  fi
  # shellcheck disable=SC2086  # the requirement list is meant to split into words
  "$venv/bin/python" -m pip install -q ${REQS[$name]}
  if [ -n "${OVERRIDES[$name]:-}" ]; then
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install -q ${OVERRIDES[$name]} 2>&1 | grep -v '^WARNING: Location' || true
  fi
  if [[ "$NEEDS_TORCH" == *" $name "* ]]; then
    # a dependency must never have swapped the torch build
    "$venv/bin/python" -c "import torch, sys; v = torch.__version__; print('torch', v); \
sys.exit(0 if v.startswith('2.13.0') else 1)"
  fi
  echo "$want" > "$stamp"
done
