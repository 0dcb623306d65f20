#!/usr/bin/env bash
# Builds the real Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler), etcd, helm, Prometheus (promtool) and Kueue from the Go module proxy at
# pinned releases, with Kueue's release manifests (CRDs, webhooks, RBAC) beside its binary.
#
# All five come from ONE scratch module, so every library they share (client-go, apimachinery,
# grpc, protobuf, otel, the etcd client, ...) resolves to one version and is compiled once:
# measured from an empty Go build cache (modules downloaded), 24 CPU-minutes and 15 minutes on 2
# cores, against 43 CPU-minutes and 23 minutes when each was built in its own module (README).
#
# k8s.io/kubernetes is not meant to be consumed as a module: its go.mod maps every
# k8s.io/<staging> module to ./staging/src/..., which a module download does not carry. The
# scratch module rewrites each of those replace lines to the published v0.X.Y of the staging
# module; etcd's server module has the same shape (replace lines to sibling modules). Other
# replace and exclude lines of the five go.mod files are carried over as they are. Helm is the
# release built against the same Kubernetes minor as the control plane, so no library is pulled
# a minor ahead of what kube-apiserver was released with.
#
# Results are cached outside the repo, in one directory keyed by all five versions (a version
# bump can move a shared library, so every binary is rebuilt; unchanged packages come from the
# Go build cache), so a second run is a no-op.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
# Prometheus module v0.3XX.Y is Prometheus 3.XX.Y. Debian's package is built without the
# Kubernetes service discovery, which the local environment needs, so we build it too.
PROM_VERSION="${PROM_VERSION:-v0.313.5}"
KUEUE_VERSION="${KUEUE_VERSION:-v0.19.2}"
CACHE="${FTO_CACHE:-$HOME/.cache/finetune-operator}"
OUT="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION-prom-$PROM_VERSION-kueue-$KUEUE_VERSION"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd helm prometheus promtool kueue)

built() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$OUT/$b" ]] || return 1; done
  [[ -f "$OUT/kueue-manifests/webhooks.yaml" ]]
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
d="$CACHE/build/all-${OUT##*/bin/}"
tmp="$OUT.tmp"
rm -rf "$tmp"
mkdir -p "$d" "$tmp"

echo "building Kubernetes $K8S_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION, Prometheus $PROM_VERSION" \
  "and Kueue $KUEUE_VERSION (first run only, ~15 min on 2 cores)" >&2
# go.mod of the scratch module: the five releases, their replace lines made absolute, their excludes.
# `go mod edit -json` parses each release's go.mod (Go's own parser, not ours).
GOFLAGS= python3 - "$d/go.mod" \
  "k8s.io/kubernetes=$K8S_VERSION" "go.etcd.io/etcd/server/v3=$ETCD_VERSION" "helm.sh/helm/v3=$HELM_VERSION" \
  "github.com/prometheus/prometheus=$PROM_VERSION" "sigs.k8s.io/kueue=$KUEUE_VERSION" <<'PY'
import json, subprocess, sys

def go_json(*args):
    return json.loads(subprocess.run(["go", *args], capture_output=True, text=True, check=True).stdout)

out, mods = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
replaces, excludes, go_line = {}, set(), (1, 26, 0)
for mod, ver in mods.items():
    gomod = go_json("mod", "edit", "-json", go_json("mod", "download", "-json", f"{mod}@{ver}")["GoMod"])
    go_line = max(go_line, tuple(int(p) for p in gomod["Go"].split(".")))
    # k8s staging modules are published as v0.<minor>.<patch>; etcd's siblings share its version
    sibling = "v0" + ver[2:] if ver.startswith("v1.") else ver
    for r in gomod.get("Replace") or []:
        old, new = r["Old"]["Path"], r["New"]
        if "FORBIDDEN" in new["Path"]:
            continue  # etcd's guard against importing its root module; not a real dependency
        local = "Version" not in new  # a directory of the release's own repository
        replaces[old] = f"{old} {sibling}" if local else f"{new['Path']} {new['Version']}"
    excludes |= {f"{e['Path']} {e['Version']}" for e in gomod.get("Exclude") or []}
    # Pin the release itself: a dependency that requires a newer one would otherwise pull the
    # build forward through minimal version selection.
    replaces[mod] = f"{mod} {ver}"
lines = ["module scratch", "go " + ".".join(map(str, go_line)), "require ("]
lines += [f"\t{m} {v}" for m, v in mods.items()] + [")", "replace ("]
lines += [f"\t{k} => {v}" for k, v in sorted(replaces.items())] + [")"]
lines += ["exclude ("] + [f"\t{e}" for e in sorted(excludes)] + [")"] if excludes else []
open(out, "w").write("\n".join(lines) + "\n")
PY
# Blank imports of the commands (never compiled: the build tag is never set) so that `go mod tidy`
# resolves everything they need into go.mod/go.sum.
cat >"$d/tools.go" <<'GO'
//go:build tools

package scratch

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
	_ "go.etcd.io/etcd/server/v3"
	_ "helm.sh/helm/v3/cmd/helm"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "sigs.k8s.io/kueue/cmd/kueue"
)
GO
rm -f "$d/go.sum"
(cd "$d" && go mod tidy)

# One `go build` per release for its own version stamps (-X is applied at link time only, so the
# packages they share are still compiled once). No DWARF: -w drops it from the binaries anyway.
build() { (cd "$d" && go build -trimpath -gcflags=all=-dwarf=false "$@"); }
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
build -ldflags "-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor \
    -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z \
    -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler
build -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
build -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm
IFS=. read -r _ pminor ppatch <<<"$PROM_VERSION"; pv="3.$((pminor - 300)).$ppatch"
# Only the Kubernetes service discovery: the other SD plugins (clouds, Consul, ...) are most of
# Prometheus' compile time and the local environment has no use for them.
build -tags remove_all_sd,enable_kubernetes_sd -ldflags "-s -w -X github.com/prometheus/common/version.Version=$pv" \
  -o "$tmp/" github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool
build -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" -o "$tmp/kueue" sigs.k8s.io/kueue/cmd/kueue

# Kueue's release manifests, which the local environment applies (localcluster/kueue.py).
src="$(cd "$d" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)/config/components"
mkdir -p "$tmp/kueue-manifests/crds"
cp "$src"/crd/bases/*.yaml "$tmp/kueue-manifests/crds/"
cp "$src/rbac/role.yaml" "$tmp/kueue-manifests/role.yaml"
cp "$src/rbac/manager_secrets_role.yaml" "$tmp/kueue-manifests/secrets-role.yaml"
cp "$src/webhook/manifests.yaml" "$tmp/kueue-manifests/webhooks.yaml"
chmod -R u+w "$tmp"
rm -rf "$OUT"
mv "$tmp" "$OUT"
echo "$OUT"
