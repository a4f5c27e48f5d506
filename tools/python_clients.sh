#!/usr/bin/env bash
# The official OpenAI and Anthropic Python clients, which the server tests drive flash-moe's server with: a virtual
# environment in target/py-clients (inside the repository, never under $HOME), created and filled from PyPI once.
# Prints the environment's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="target/py-clients"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import openai, anthropic" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check openai anthropic >&2
fi
echo "$PWD/$venv/bin/python"
