#!/usr/bin/env bash
# Installs what Heirloom needs and is missing: the pinned PyTorch wheel (libtorch for the
# worker), torchvision and transformers for the interop tests, numpy/scikit-learn/
# safetensors for the demo's data, moto's S3-compatible server for the artifact tests, grpcio-tools for the
# Python client and kubernetes-validate for the deploy manifests, into a cached
# virtualenv, and the PostgreSQL server from the distribution's packages; for the
# explorer's browser tests, Debian's Chromium and playwright-core from the npm registry.
# Safe to run again: it only installs what is not there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"

TORCH_VERSION=2.11.0
TORCHVISION_VERSION=0.26.0 # the release paired with torch 2.11; the interop tests use it
MOTO_VERSION=5.2.5 # its standalone server stands in for S3 in the tests
GRPCIO_TOOLS_VERSION=1.85.1 # the Python client's stubs, generated from proto/ by the tests
KUBERNETES_VALIDATE_VERSION=1.37.0 # checks deploy/kubernetes against the API's schemas, offline
PLAYWRIGHT_CORE_VERSION=1.64.1 # drives Debian's Chromium in the explorer's browser tests
TRANSFORMERS_VERSION=5.23.0 # the language-model interop peer (tiny random configs, no hub)

install_packages() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@"
}

if ! "$HEIRLOOM_VENV/bin/python" -c "import torch, torchvision, sklearn, safetensors, numpy, moto, flask, grpc_tools, grpc_reflection, kubernetes_validate, transformers; assert torch.__version__.startswith('$TORCH_VERSION') and torchvision.__version__.startswith('$TORCHVISION_VERSION') and transformers.__version__ == '$TRANSFORMERS_VERSION'" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION into $HEIRLOOM_VENV (a few GB, once)" >&2
  mkdir -p "$HEIRLOOM_CACHE"
  if ! python3 -m venv "$HEIRLOOM_VENV" 2>/dev/null; then
    # Debian's python3 keeps venv in a package of its own.
    install_packages python3-venv
    python3 -m venv "$HEIRLOOM_VENV"
  fi
  "$HEIRLOOM_VENV/bin/pip" install --quiet --disable-pip-version-check \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" numpy scikit-learn safetensors "moto[server]==$MOTO_VERSION" \
    "grpcio-tools==$GRPCIO_TOOLS_VERSION" "grpcio-reflection==$GRPCIO_TOOLS_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    "transformers==$TRANSFORMERS_VERSION" \
    "setuptools<82" # torch 2.11 asks for it; grpcio-tools would pull a newer one
fi

if ! command -v docker-compose >/dev/null 2>&1; then
  echo "setup: installing docker-compose (its \`config\` checks deploy/compose.yaml)" >&2
  install_packages docker-compose
fi

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} (the explorer's browser tests)" >&2
  install_packages "${missing[@]}"
fi
export HEIRLOOM_PLAYWRIGHT="$HEIRLOOM_CACHE/browser/node_modules/playwright-core/index.mjs"
if [ ! -f "$HEIRLOOM_PLAYWRIGHT" ] || ! grep -q "\"version\": \"$PLAYWRIGHT_CORE_VERSION\"" \
  "$HEIRLOOM_CACHE/browser/node_modules/playwright-core/package.json"; then
  echo "setup: installing playwright-core@$PLAYWRIGHT_CORE_VERSION (no browser download: it drives Debian's Chromium)" >&2
  mkdir -p "$HEIRLOOM_CACHE/browser"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$HEIRLOOM_CACHE/browser" --no-audit --no-fund \
    --silent "playwright-core@$PLAYWRIGHT_CORE_VERSION" >&2
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "setup: installing the PostgreSQL server packages" >&2
  install_packages postgresql
fi
