#!/usr/bin/env bash
# Builds the real Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler), etcd and helm from the Go module proxy at pinned releases.
#
# k8s.io/kubernetes is not meant to be consumed as a module: its go.mod maps every
# k8s.io/<staging> module to ./staging/src/..., which a module download does not carry.
# We build from a scratch module that requires k8s.io/kubernetes and rewrites each of
# those replace lines to the published v0.X.Y of the staging module. etcd's server
# module has the same shape (replace lines to sibling modules), so it gets the same
# treatment. Results are cached outside the repo, keyed by version, so a second run
# is a no-op.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# Prometheus module v0.3XX.Y is Prometheus 3.XX.Y. Debian's package is built without the
# Kubernetes service discovery, which the local environment needs, so we build it too.
PROM_VERSION="${PROM_VERSION:-v0.313.5}"
KUEUE_VERSION="${KUEUE_VERSION:-v0.19.2}"
CACHE="${FTO_CACHE:-$HOME/.cache/finetune-operator}"
OUT="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION-prom-$PROM_VERSION"
# Kueue has its own directory: its binary beside the manifests of the same release (CRDs, webhooks,
# RBAC) that the local environment applies, so a Kueue upgrade rebuilds nothing else.
KUEUE_OUT="$CACHE/bin/kueue-$KUEUE_VERSION"

built() {
  [[ -x "$OUT/kube-apiserver" && -x "$OUT/kube-controller-manager" && -x "$OUT/kube-scheduler" \
      && -x "$OUT/etcd" && -x "$OUT/helm" && -x "$OUT/prometheus" && -x "$OUT/promtool" \
      && -x "$KUEUE_OUT/kueue" && -f "$KUEUE_OUT/manifests/webhooks.yaml" ]]
}

if built; then
  echo "$OUT"
  exit 0
fi

# One build at a time: a second caller (another shell, a test session) waits and then finds
# the binaries cached instead of compiling the same thing beside us.
mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock"
flock 9
if built; then
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null || { echo "go is required (Go toolchain >= 1.26) to build the control plane" >&2; exit 1; }
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0
work="$CACHE/build"
mkdir -p "$work" "$OUT.tmp"

# scratch_module DIR MODULE VERSION STAGING_PREFIX STAGING_VERSION
# Writes DIR/go.mod requiring MODULE@VERSION with the module's relative replace lines
# turned into published versions.
scratch_module() {
  local dir="$1" mod="$2" ver="$3"
  mkdir -p "$dir"
  (cd "$dir" && rm -f go.mod go.sum && go mod init scratch >/dev/null 2>&1)
  local gomod
  gomod="$(cd "$dir" && go mod download -json "$mod@$ver" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    echo "module scratch"
    grep -E '^go [0-9]' "$gomod" | head -1
    echo "require $mod $ver"
    # Pin the module itself: a dependency that requires a newer release would otherwise
    # pull the build forward through minimal version selection.
    echo "replace $mod => $mod $ver"
    # "	k8s.io/api => ./staging/src/k8s.io/api" -> "replace k8s.io/api => k8s.io/api v0.36.3"
    python3 - "$gomod" "$ver" <<'PY'
import re, sys
gomod, ver = sys.argv[1], sys.argv[2]
text = open(gomod).read()
# k8s staging modules are published as v0.<minor>.<patch>; etcd's siblings share its version
staging_ver = "v0" + ver[2:] if ver.startswith("v1.") else ver
body = re.findall(r"^replace\s*\((.*?)^\)", text, re.S | re.M)
lines = [l for b in body for l in b.splitlines()] + re.findall(r"^replace\s+(\S+\s*=>.*)$", text, re.M)
for line in lines:
    m = re.match(r"\s*(\S+)\s*=>\s*(\.\S*)\s*$", line)
    if m and "FORBIDDEN" in m.group(2):
        continue  # etcd's guard against importing its root module; not a real dependency
    if m:
        print(f"replace {m.group(1)} => {m.group(1)} {staging_ver}")
    elif "=>" in line.strip() and not line.strip().startswith("//"):
        print("replace " + line.strip())
PY
  } >"$dir/go.mod.new"
  mv "$dir/go.mod.new" "$dir/go.mod"
  (cd "$dir" && go mod download >/dev/null 2>&1 || true)
}

if [[ ! -x "$OUT/kube-apiserver" || ! -x "$OUT/kube-controller-manager" || ! -x "$OUT/kube-scheduler" ]]; then
  echo "building Kubernetes $K8S_VERSION control plane (first run only, ~15-25 min on 2 cores)" >&2
  d="$work/k8s-$K8S_VERSION"
  scratch_module "$d" k8s.io/kubernetes "$K8S_VERSION"
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  vpkg=k8s.io/component-base/version
  ld="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor \
      -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z \
      -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  (cd "$d" && go mod tidy >/dev/null 2>&1 || true)
  (cd "$d" && go build -trimpath -ldflags "$ld" -o "$OUT.tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler)
  mv "$OUT.tmp"/kube-* "$OUT/" 2>/dev/null || { mkdir -p "$OUT"; mv "$OUT.tmp"/kube-* "$OUT/"; }
fi

mkdir -p "$OUT"
if [[ ! -x "$OUT/etcd" ]]; then
  echo "building etcd $ETCD_VERSION" >&2
  d="$work/etcd-$ETCD_VERSION"
  scratch_module "$d" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  (cd "$d" && go build -trimpath -ldflags "-s -w" -o "$OUT.tmp/etcd" go.etcd.io/etcd/server/v3)
  mv "$OUT.tmp/etcd" "$OUT/etcd"
fi

if [[ ! -x "$OUT/helm" ]]; then
  echo "building helm $HELM_VERSION" >&2
  d="$work/helm-$HELM_VERSION"
  scratch_module "$d" helm.sh/helm/v3 "$HELM_VERSION"
  (cd "$d" && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
      -o "$OUT.tmp/helm" helm.sh/helm/v3/cmd/helm)
  mv "$OUT.tmp/helm" "$OUT/helm"
fi
if [[ ! -x "$OUT/prometheus" || ! -x "$OUT/promtool" ]]; then
  echo "building prometheus $PROM_VERSION" >&2
  d="$work/prometheus-$PROM_VERSION"
  scratch_module "$d" github.com/prometheus/prometheus "$PROM_VERSION"
  IFS=. read -r _ pminor ppatch <<<"$PROM_VERSION"; pv="3.$((pminor - 300)).$ppatch"
  (cd "$d" && go mod tidy >/dev/null 2>&1 || true)
  # Only the Kubernetes service discovery: the other SD plugins (clouds, Consul, ...) are most
  # of Prometheus' compile time and the local environment has no use for them.
  (cd "$d" && go build -trimpath -tags remove_all_sd,enable_kubernetes_sd \
      -ldflags "-s -w -X github.com/prometheus/common/version.Version=$pv" \
      -o "$OUT.tmp/" github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool)
  mv "$OUT.tmp/prometheus" "$OUT.tmp/promtool" "$OUT/"
fi
if [[ ! -x "$KUEUE_OUT/kueue" || ! -f "$KUEUE_OUT/manifests/webhooks.yaml" ]]; then
  echo "building kueue $KUEUE_VERSION" >&2
  # Kueue's go.mod has no replace lines, so `go install module@version` builds it as released
  # (-mod=mod is not allowed there).
  mkdir -p "$KUEUE_OUT.tmp"
  (cd "$work" && GOFLAGS= GOBIN="$KUEUE_OUT.tmp" go install -trimpath -ldflags "-s -w \
      -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION")
  src="$(GOFLAGS= go env GOMODCACHE)/sigs.k8s.io/kueue@$KUEUE_VERSION/config/components"
  mkdir -p "$KUEUE_OUT.tmp/manifests/crds"
  cp "$src"/crd/bases/*.yaml "$KUEUE_OUT.tmp/manifests/crds/"
  cp "$src/webhook/manifests.yaml" "$KUEUE_OUT.tmp/manifests/webhooks.yaml.tmp"
  cp "$src/rbac/role.yaml" "$KUEUE_OUT.tmp/manifests/role.yaml"
  cp "$src/rbac/manager_secrets_role.yaml" "$KUEUE_OUT.tmp/manifests/secrets-role.yaml"
  chmod -R u+w "$KUEUE_OUT.tmp"
  mv "$KUEUE_OUT.tmp/manifests/webhooks.yaml.tmp" "$KUEUE_OUT.tmp/manifests/webhooks.yaml"
  rm -rf "$KUEUE_OUT"
  mv "$KUEUE_OUT.tmp" "$KUEUE_OUT"
fi
rmdir "$OUT.tmp" 2>/dev/null || true
echo "$OUT"
