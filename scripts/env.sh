# Sourced by the other scripts: where the cached PyTorch virtualenv lives, and the
# environment that builds the worker against its libtorch.
HEIRLOOM_CACHE="${HEIRLOOM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/heirloom}"
HEIRLOOM_VENV="$HEIRLOOM_CACHE/venv"
export LIBTORCH_USE_PYTORCH=1
export PATH="$HEIRLOOM_VENV/bin:$PATH"
