#!/usr/bin/env python3
"""Policy checks on rendered Kubernetes manifests (the output of `kubectl kustomize`).

    python3 .ci/policy.py [--mode full|overlay|component] [--external KIND/NAME]... [--production] NAME FILE

NAME only labels the output. FILE is one rendered, multi-document YAML file.
--mode says what was rendered:
  component  one base folder alone: checks on its own objects only
  full       the whole base: also checks that references between objects
             resolve and that the four shop services are all there
  overlay    an environment: as `full`, and every image must carry a tag
--external KIND/NAME  an object the render reads but does not contain, created
             in the cluster by other means (prod's Secret shop-secrets)
--production  nothing marked `shop/dev-only` may be in the render

Prints one line per check, `PASS name: check` or `FAIL name: check: why`
(one FAIL line per offending object), and exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import yaml

# The four services built from the one `shop` image, with their ports.
SHOP_SERVICES = {"product": 8081, "order": 8080, "payment": 8082, "gateway": 8083}
# Kinds whose pod template runs a long-lived server (probes expected).
SERVER_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
POD_KINDS = SERVER_KINDS | {"Job", "ReplicaSet"}
# app.kubernetes.io/component values: docs/deploy.md applies the shop one
# component at a time with `kubectl apply -k OVERLAY -l app.kubernetes.io/component=...`.
COMPONENTS = {"config", "kafka", "database", "cache", "service", "migration", "network-policy"}
VAR_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Obj = dict[str, Any]


class Report:
    """Collects the outcome of each check and prints it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failed = 0
        self.passed = 0

    def check(self, title: str, problems: list[str]) -> None:
        problems = list(dict.fromkeys(problems))  # each problem once, in order
        if problems:
            self.failed += 1
            for problem in problems:
                print(f"FAIL {self.name}: {title}: {problem}")
        else:
            self.passed += 1
            print(f"PASS {self.name}: {title}")


def ident(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_spec(obj: Obj) -> Obj | None:
    if obj.get("kind") == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if obj.get("kind") in POD_KINDS:
        return obj["spec"]["template"]["spec"]
    return None


def containers(obj: Obj, init: bool = True) -> Iterator[tuple[str, Obj]]:
    """(where, container) for every container of a pod-bearing object."""
    spec = pod_spec(obj)
    if spec is None:
        return
    keys = ["containers"] + (["initContainers"] if init else [])
    for key in keys:
        for container in spec.get(key) or []:
            yield f"{ident(obj)} container {container['name']}", container


def effective(obj: Obj, container: Obj, field: str) -> Any:
    """A securityContext field as the container sees it (container over pod)."""
    own = (container.get("securityContext") or {}).get(field)
    if own is not None:
        return own
    return ((pod_spec(obj) or {}).get("securityContext") or {}).get(field)


def image_parts(image: str) -> tuple[str, str | None]:
    """(name, tag) of an image reference; tag None when absent (digests count as a tag)."""
    if "@" in image:
        return image.split("@", 1)[0], "digest"
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        return image.rsplit(":", 1)[0], image.rsplit(":", 1)[1]
    return image, None


def selects(selector: Obj | None, labels: Obj) -> bool:
    """Whether a LabelSelector (matchLabels/matchExpressions) selects labels."""
    if not selector:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# ---------------------------------------------------------------- per container


def check_resources(objs: list[Obj]) -> list[str]:
    problems = []
    for obj in objs:
        for where, c in containers(obj):
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                missing = [r for r in ("cpu", "memory") if r not in (res.get(kind) or {})]
                if missing:
                    problems.append(f"{where} has no {kind} for {', '.join(missing)}")
    return problems


def check_probes(objs: list[Obj]) -> list[str]:
    problems = []
    for obj in objs:
        if obj["kind"] not in SERVER_KINDS:
            continue
        for where, c in containers(obj, init=False):
            for probe in ("livenessProbe", "readinessProbe"):
                if not c.get(probe):
                    problems.append(f"{where} has no {probe}")
    return problems


def check_not_privileged(objs: list[Obj]) -> list[str]:
    problems = []
    for obj in objs:
        spec = pod_spec(obj) or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{ident(obj)} sets {flag}")
        for where, c in containers(obj):
            if (c.get("securityContext") or {}).get("privileged") is True:
                problems.append(f"{where} is privileged")
    return problems


def check_no_privilege_escalation(objs: list[Obj]) -> list[str]:
    problems = []
    for obj in objs:
        for where, c in containers(obj):
            if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where} does not set allowPrivilegeEscalation: false")
    return problems


def check_capabilities_dropped(objs: list[Obj]) -> list[str]:
    problems = []
    for obj in objs:
        for where, c in containers(obj):
            caps = (c.get("securityContext") or {}).get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append(f"{where} does not drop ALL capabilities")
            if caps.get("add"):
                problems.append(f"{where} adds capabilities {caps['add']}")
    return problems


def check_non_root(objs: list[Obj]) -> list[str]:
    problems = []
    for obj in objs:
        for where, c in containers(obj):
            if effective(obj, c, "runAsNonRoot") is not True:
                problems.append(f"{where} does not set runAsNonRoot: true")
            if effective(obj, c, "runAsUser") == 0:
                problems.append(f"{where} runs as uid 0")
            seccomp = (effective(obj, c, "seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where} has no RuntimeDefault seccomp profile")
    return problems


def check_image_tags(objs: list[Obj], allow_placeholder: bool) -> list[str]:
    problems = []
    for obj in objs:
        for where, c in containers(obj):
            name, tag = image_parts(c.get("image", ""))
            if tag is None and allow_placeholder and name == "shop":
                continue  # base: the overlays set the registry and tag
            if tag is None or tag == "latest":
                problems.append(f"{where} image {c.get('image')!r} has no pinned tag")
    return problems


def check_component_labels(objs: list[Obj]) -> list[str]:
    """Every object (but the Namespace) says which component it belongs to, and that it is the shop's."""
    problems = []
    for obj in objs:
        if obj["kind"] == "Namespace":
            continue
        labels = obj["metadata"].get("labels") or {}
        if labels.get("app.kubernetes.io/component") not in COMPONENTS:
            problems.append(
                f"{ident(obj)} has app.kubernetes.io/component "
                f"{labels.get('app.kubernetes.io/component')!r}, not one of {sorted(COMPONENTS)}"
            )
        if labels.get("app.kubernetes.io/part-of") != "shop":
            problems.append(f"{ident(obj)} lacks app.kubernetes.io/part-of: shop")
    return problems


# ---------------------------------------------------------------- shop services


def shop_deployments(objs: list[Obj]) -> dict[str, Obj]:
    return {
        o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] in SHOP_SERVICES
    }


def check_shop_present(objs: list[Obj]) -> list[str]:
    found = shop_deployments(objs)
    problems = [f"Deployment/{n} is missing" for n in SHOP_SERVICES if n not in found]
    services = {o["metadata"]["name"] for o in objs if o["kind"] == "Service"}
    problems += [f"Service/{n} is missing" for n in SHOP_SERVICES if n not in services]
    return problems


def check_shop_hardening(objs: list[Obj]) -> list[str]:
    problems = []
    for obj in shop_deployments(objs).values():
        spec = pod_spec(obj) or {}
        for where, c in containers(obj):
            if effective(obj, c, "runAsNonRoot") is not True:
                problems.append(f"{where} is not runAsNonRoot")
            if effective(obj, c, "runAsUser") != 65532:
                problems.append(f"{where} does not run as uid 65532")
            if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where} has a writable root filesystem")
        if not spec.get("terminationGracePeriodSeconds"):
            problems.append(f"{ident(obj)} sets no terminationGracePeriodSeconds")
        annotations = obj["spec"]["template"]["metadata"].get("annotations") or {}
        if annotations.get("prometheus.io/scrape") != "true":
            problems.append(f"{ident(obj)} pods lack prometheus.io/scrape annotations")
    return problems


def check_shop_wiring(objs: list[Obj]) -> list[str]:
    """Each shop Deployment runs its own subcommand on its own port, probed there."""
    problems = []
    for name, obj in shop_deployments(objs).items():
        c = obj["spec"]["template"]["spec"]["containers"][0]
        if (c.get("args") or [None])[0] != name:
            problems.append(f"{ident(obj)} runs args {c.get('args')}, not [{name!r}]")
        ports = {p["containerPort"] for p in c.get("ports") or []}
        if SHOP_SERVICES[name] not in ports:
            problems.append(f"{ident(obj)} does not expose port {SHOP_SERVICES[name]}")
        port = (obj["spec"]["template"]["metadata"].get("annotations") or {}).get("prometheus.io/port")
        if port is not None and port != str(SHOP_SERVICES[name]):
            problems.append(f"{ident(obj)} prometheus.io/port is {port}")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
            if got != path:
                problems.append(f"{ident(obj)} {probe} path is {got!r}, not {path}")
    return problems


# ---------------------------------------------------------------- references


def _unresolved(ref: str, defined: set[str], all_env: set[str], unknown_source: bool) -> bool:
    """A $(ref) that Kubernetes would leave as text: defined later, or nowhere we can see."""
    return ref not in defined and (ref in all_env or not unknown_source)


def check_env_references(objs: list[Obj]) -> list[str]:
    """$(VAR) in env values, command and args names a variable defined before it.

    Kubernetes leaves an unresolved $(VAR) as literal text, silently; and a
    kustomize patch that touches an env entry moves it to the front of the list.
    """
    configmaps = {o["metadata"]["name"]: o.get("data") or {} for o in objs if o["kind"] == "ConfigMap"}
    secrets = {
        o["metadata"]["name"]: {**(o.get("data") or {}), **(o.get("stringData") or {})}
        for o in objs
        if o["kind"] == "Secret"
    }
    problems = []
    for obj in objs:
        for where, c in containers(obj):
            defined: set[str] = set()
            # An envFrom source outside the render (a component rendered alone)
            # may define anything: then only order mistakes can be seen.
            unknown_source = False
            for source in c.get("envFrom") or []:
                prefix = source.get("prefix", "")
                if "configMapRef" in source:
                    keys = configmaps.get(source["configMapRef"]["name"])
                else:
                    keys = secrets.get(source.get("secretRef", {}).get("name"))
                if keys is None:
                    unknown_source = True
                else:
                    defined |= {prefix + k for k in keys}
            all_env = {e["name"] for e in c.get("env") or []}
            for env in c.get("env") or []:
                for ref in sorted(set(VAR_REF.findall(str(env.get("value", ""))))):
                    if _unresolved(ref, defined, all_env, unknown_source):
                        problems.append(f"{where} env {env['name']} uses $({ref}) before it is defined")
                defined.add(env["name"])
            for field in ("command", "args"):
                for arg in c.get(field) or []:
                    for ref in sorted(set(VAR_REF.findall(str(arg)))):
                        if _unresolved(ref, defined, all_env, unknown_source):
                            problems.append(f"{where} {field} uses undefined $({ref})")
    return problems


def check_config_references(objs: list[Obj], external: set[str]) -> list[str]:
    """Every ConfigMap and Secret a container reads exists here (or is declared external), with the key it reads."""
    configmaps = {o["metadata"]["name"]: o.get("data") or {} for o in objs if o["kind"] == "ConfigMap"}
    secrets = {
        o["metadata"]["name"]: {**(o.get("data") or {}), **(o.get("stringData") or {})}
        for o in objs
        if o["kind"] == "Secret"
    }
    problems = []

    def need(where: str, store: dict[str, dict], kind: str, name: str, key: str | None, optional: bool) -> None:
        if optional or f"{kind}/{name}" in external:
            return
        if name not in store:
            problems.append(f"{where} reads {kind}/{name}, which is not in the render")
        elif key is not None and key not in store[name]:
            problems.append(f"{where} reads key {key} of {kind}/{name}, which has no such key")

    for obj in objs:
        for where, c in containers(obj):
            for source in c.get("envFrom") or []:
                if "configMapRef" in source:
                    ref = source["configMapRef"]
                    need(where, configmaps, "ConfigMap", ref["name"], None, ref.get("optional", False))
                if "secretRef" in source:
                    ref = source["secretRef"]
                    need(where, secrets, "Secret", ref["name"], None, ref.get("optional", False))
            for env in c.get("env") or []:
                source = env.get("valueFrom") or {}
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    need(where, configmaps, "ConfigMap", ref["name"], ref["key"], ref.get("optional", False))
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    need(where, secrets, "Secret", ref["name"], ref["key"], ref.get("optional", False))
    return problems


def pod_templates(objs: list[Obj]) -> list[tuple[Obj, Obj]]:
    return [(o, o["spec"]["template"]) for o in objs if o["kind"] in POD_KINDS and o["kind"] != "Job"]


def check_service_selectors(objs: list[Obj]) -> list[str]:
    """Each Service selects some pods, and its target ports exist on them."""
    problems = []
    templates = pod_templates(objs)
    for svc in (o for o in objs if o["kind"] == "Service"):
        selector = svc["spec"].get("selector")
        if not selector:
            continue
        matched = [
            (o, t) for o, t in templates if selects({"matchLabels": selector}, t["metadata"].get("labels") or {})
        ]
        if not matched:
            problems.append(f"{ident(svc)} selects no pods ({selector})")
            continue
        for port in svc["spec"].get("ports") or []:
            target = port.get("targetPort", port["port"])
            for obj, template in matched:
                ports = [p for c in template["spec"]["containers"] for p in c.get("ports") or []]
                if not any(p.get("name") == target or p["containerPort"] == target for p in ports):
                    problems.append(
                        f"{ident(svc)} port {port.get('name')} targets {target!r}, absent from {ident(obj)}"
                    )
    return problems


def check_workload_selectors(objs: list[Obj]) -> list[str]:
    """Each workload's selector matches its own pod template."""
    problems = []
    for obj, template in pod_templates(objs):
        if not selects(obj["spec"].get("selector"), template["metadata"].get("labels") or {}):
            problems.append(f"{ident(obj)} selector does not match its pod template")
    return problems


def check_autoscaling_targets(objs: list[Obj]) -> list[str]:
    """HPAs scale existing workloads, which then carry no fixed replica count; PDBs select pods."""
    problems = []
    by_id = {ident(o): o for o in objs}
    for hpa in (o for o in objs if o["kind"] == "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = by_id.get(f"{ref['kind']}/{ref['name']}")
        if target is None:
            problems.append(f"{ident(hpa)} scales {ref['kind']}/{ref['name']}, which is not in the render")
        elif target["spec"].get("replicas") is not None:
            problems.append(f"{ident(target)} sets replicas although {ident(hpa)} scales it")
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            problems.append(f"{ident(hpa)} has minReplicas above maxReplicas")
    templates = pod_templates(objs)
    for pdb in (o for o in objs if o["kind"] == "PodDisruptionBudget"):
        if not any(selects(pdb["spec"].get("selector"), t["metadata"].get("labels") or {}) for _, t in templates):
            problems.append(f"{ident(pdb)} selects no pods")
    return problems


def check_network_policies(objs: list[Obj]) -> list[str]:
    """Each NetworkPolicy's pod selectors select some pod of the render."""
    problems = []
    labels = [t["metadata"].get("labels") or {} for _, t in pod_templates(objs)]
    labels += [o["spec"]["template"]["metadata"].get("labels") or {} for o in objs if o["kind"] == "Job"]
    # The optional migrate Job lives outside the rendered base: known by its labels.
    labels.append({"app.kubernetes.io/name": "shop-migrate", "app.kubernetes.io/component": "migration"})

    def any_selected(selector: Obj) -> bool:
        return selector == {} or any(selects(selector, l) for l in labels)

    for pol in (o for o in objs if o["kind"] == "NetworkPolicy"):
        spec = pol["spec"]
        if not any_selected(spec.get("podSelector", {})):
            problems.append(f"{ident(pol)} podSelector selects no pod")
        for rule in (spec.get("ingress") or []) + (spec.get("egress") or []):
            for peer in (rule.get("from") or []) + (rule.get("to") or []):
                if "podSelector" in peer and "namespaceSelector" not in peer and not any_selected(peer["podSelector"]):
                    problems.append(f"{ident(pol)} peer {peer['podSelector']} selects no pod")
    return problems


def check_no_dev_only(objs: list[Obj]) -> list[str]:
    """Objects annotated shop/dev-only (the development Secret) stay out of production."""
    return [
        f"{ident(o)} is marked shop/dev-only"
        for o in objs
        if (o["metadata"].get("annotations") or {}).get("shop/dev-only") == "true"
    ]


# ---------------------------------------------------------------- kafka


def env_of(container: Obj) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def check_kafka_quorum(objs: list[Obj]) -> list[str]:
    """KRaft: one voter per broker pod, ids = ordinals; replication fits the broker count."""
    problems = []
    for obj in objs:
        if obj["kind"] != "StatefulSet":
            continue
        for where, c in containers(obj, init=False):
            env = env_of(c)
            if "KAFKA_CONTROLLER_QUORUM_VOTERS" not in env:
                continue
            replicas = obj["spec"].get("replicas", 1)
            sts = obj["metadata"]["name"]
            voters = [v.strip() for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",") if v.strip()]
            expected = [f"{i}@{sts}-{i}." for i in range(replicas)]
            if len(voters) != replicas or not all(v.startswith(e) for v, e in zip(voters, expected)):
                problems.append(f"{where}: {replicas} replicas but quorum voters {voters}")
            rf = int(env.get("KAFKA_DEFAULT_REPLICATION_FACTOR", "1"))
            min_isr = int(env.get("KAFKA_MIN_INSYNC_REPLICAS", "1"))
            for key in (
                "KAFKA_DEFAULT_REPLICATION_FACTOR",
                "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
            ):
                if int(env.get(key, "1")) > replicas:
                    problems.append(f"{where}: {key}={env[key]} exceeds {replicas} brokers")
            if min_isr > rf:
                problems.append(f"{where}: min.insync.replicas {min_isr} exceeds replication factor {rf}")
            if rf > 1 and min_isr >= rf:
                problems.append(f"{where}: min.insync.replicas {min_isr} leaves no broker to lose")
            if "KAFKA_NODE_ID" in env:
                problems.append(f"{where}: KAFKA_NODE_ID is fixed, but each pod needs its own")
            if obj["spec"].get("podManagementPolicy") != "Parallel" and replicas > 1:
                problems.append(f"{ident(obj)}: brokers must start in parallel to form the quorum")
    return problems


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["full", "overlay", "component"], default="full")
    parser.add_argument("--external", action="append", default=[], metavar="KIND/NAME")
    parser.add_argument("--production", action="store_true")
    parser.add_argument("name")
    parser.add_argument("file")
    args = parser.parse_args()

    with open(args.file, encoding="utf-8") as f:
        objs = [d for d in yaml.safe_load_all(f) if d]
    report = Report(args.name)
    if not objs:
        report.check("render has objects", ["no objects"])
        return 1

    checks: list[tuple[str, Callable[[], list[str]]]] = [
        ("resource requests and limits (cpu, memory) on every container", lambda: check_resources(objs)),
        ("liveness and readiness probes on every server container", lambda: check_probes(objs)),
        ("no privileged containers or host namespaces", lambda: check_not_privileged(objs)),
        ("allowPrivilegeEscalation: false on every container", lambda: check_no_privilege_escalation(objs)),
        ("capabilities drop ALL on every container", lambda: check_capabilities_dropped(objs)),
        ("non-root with RuntimeDefault seccomp on every container", lambda: check_non_root(objs)),
        ("workload selectors match their pod templates", lambda: check_workload_selectors(objs)),
        ("$(VAR) references resolve in order", lambda: check_env_references(objs)),
        ("Kafka quorum voters and replication fit the broker count", lambda: check_kafka_quorum(objs)),
        (
            "shop Deployments: non-root uid 65532, read-only root, grace period, scrape annotations",
            lambda: check_shop_hardening(objs),
        ),
        ("shop Deployments: subcommand, port and probe paths", lambda: check_shop_wiring(objs)),
        ("every object labelled with its component and part-of: shop", lambda: check_component_labels(objs)),
        ("images carry a pinned tag", lambda: check_image_tags(objs, allow_placeholder=args.mode != "overlay")),
    ]
    if args.mode in ("full", "overlay"):
        checks += [
            ("the four shop services (Deployment + Service) are present", lambda: check_shop_present(objs)),
            (
                "ConfigMaps, Secrets and keys read by containers exist",
                lambda: check_config_references(objs, set(args.external)),
            ),
            ("Services select pods that have their target ports", lambda: check_service_selectors(objs)),
            ("HPA targets exist and PDBs select pods", lambda: check_autoscaling_targets(objs)),
            ("NetworkPolicy selectors select pods", lambda: check_network_policies(objs)),
        ]
    if args.production:
        checks.append(("no development-only objects", lambda: check_no_dev_only(objs)))
    for title, run in checks:
        report.check(title, run())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
