#!/usr/bin/env python3
"""Checks what a schema cannot about rendered Multiverse manifests (read from stdin, e.g.
`kubectl kustomize deploy/kubernetes/overlays/production | python3 check_manifests.py`):
that the pieces fit together and keep the promises of docs/deploy-kubernetes.md.

- no key in a ConfigMap: admin keys come from a Secret file, upstream keys from the API;
- the proxies: readiness /ready, liveness /healthz on the admin port, a preStop pause shorter
  than the grace period, every control plane through the headless Service by dns+http://;
- the HPA and the PodDisruptionBudget act on the proxy Deployment;
- the headless Service selects every control plane (GPU DaemonSet and backends Deployment) and
  exposes discovery; the DaemonSet runs on GPU nodes with nvidia.com/gpu and keeps its state;
- every ConfigMap and Secret a pod mounts exists, unless the overlay says it is created
  out of band (--external-secret NAME).

Exits 1 with one line per problem. Needs PyYAML (a dependency of kubernetes-validate).
"""

import argparse
import re
import sys

import yaml


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--external-secret", action="append", default=[], help="a Secret created outside the manifests")
    ap.add_argument("--gpu", action="store_true", help="the GPU DaemonSet must select GPU nodes and request GPUs")
    args = ap.parse_args()
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    problems = []

    def of(kind):
        return [d for d in docs if d.get("kind") == kind]

    def one(kind, name):
        found = [d for d in of(kind) if d["metadata"]["name"] == name]
        if len(found) != 1:
            problems.append(f"expected one {kind} {name}, found {len(found)}")
            return None
        return found[0]

    names = {(d["kind"], d["metadata"]["name"]) for d in docs}

    # Keys never in a ConfigMap.
    key_line = re.compile(r'^\s*(api_keys\s*=\s*\[\s*"|api_key\s*=\s*")', re.M)
    for cm in of("ConfigMap"):
        for fname, text in (cm.get("data") or {}).items():
            if key_line.search(text or ""):
                problems.append(f"ConfigMap {cm['metadata']['name']}/{fname} contains an API key")

    # What pods mount exists.
    workloads = of("Deployment") + of("DaemonSet")
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in names:
                problems.append(f"{w['metadata']['name']} mounts missing ConfigMap {v['configMap']['name']}")
            if "secret" in v:
                s = v["secret"]["secretName"]
                if ("Secret", s) not in names and s not in args.external_secret:
                    problems.append(f"{w['metadata']['name']} mounts missing Secret {s}")
            if "persistentVolumeClaim" in v:
                c = v["persistentVolumeClaim"]["claimName"]
                if ("PersistentVolumeClaim", c) not in names:
                    problems.append(f"{w['metadata']['name']} mounts missing PVC {c}")

    proxy = one("Deployment", "multiverse-proxy")
    if proxy:
        pod = proxy["spec"]["template"]["spec"]
        c = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe, path in [("readinessProbe", "/ready"), ("livenessProbe", "/healthz")]:
            get = (c.get(probe) or {}).get("httpGet", {})
            if get.get("path") != path or ports.get(get.get("port"), get.get("port")) != 9901:
                problems.append(f"proxy {probe} must GET {path} on the admin port 9901")
        pause = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if not pause or pause >= grace:
            problems.append(f"proxy needs a preStop sleep shorter than its grace period ({pause} vs {grace})")
        argv = " ".join(c.get("args", []))
        if "--control-plane dns+http://multiverse-control.$(POD_NAMESPACE).svc:9001" not in argv:
            problems.append(f"proxy must subscribe through the headless Service: {argv}")
        for ref_kind in ["HorizontalPodAutoscaler", "PodDisruptionBudget"]:
            for r in of(ref_kind):
                if ref_kind == "HorizontalPodAutoscaler":
                    ok = r["spec"]["scaleTargetRef"]["name"] == "multiverse-proxy"
                else:
                    labels = proxy["spec"]["template"]["metadata"]["labels"]
                    sel = r["spec"]["selector"]["matchLabels"]
                    ok = all(labels.get(k) == v for k, v in sel.items())
                if not ok:
                    problems.append(f"{ref_kind} {r['metadata']['name']} does not act on the proxies")
        if not of("HorizontalPodAutoscaler") or not of("PodDisruptionBudget"):
            problems.append("the proxies need an HPA and a PodDisruptionBudget")

    headless = one("Service", "multiverse-control")
    if headless:
        if headless["spec"].get("clusterIP") != "None":
            problems.append("Service multiverse-control must be headless (clusterIP: None)")
        if not any(p["port"] == 9001 for p in headless["spec"]["ports"]):
            problems.append("Service multiverse-control must expose discovery on 9001")
        sel = headless["spec"]["selector"]
        for name in ["multiverse-control-gpu", "multiverse-control-backends"]:
            w = next((x for x in workloads if x["metadata"]["name"] == name), None)
            if w is None:
                problems.append(f"missing control plane workload {name}")
                continue
            labels = w["spec"]["template"]["metadata"]["labels"]
            if not all(labels.get(k) == v for k, v in sel.items()):
                problems.append(f"headless Service does not select {name}")

    ds = one("DaemonSet", "multiverse-control-gpu")
    if ds:
        pod = ds["spec"]["template"]["spec"]
        c = pod["containers"][0]
        if args.gpu:
            if "nvidia.com/gpu" not in (c.get("resources", {}).get("limits") or {}):
                problems.append("the GPU DaemonSet must request nvidia.com/gpu")
            if not pod.get("nodeSelector"):
                problems.append("the GPU DaemonSet must select GPU nodes")
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        if "/var/lib/multiverse" not in mounts:
            problems.append("the GPU DaemonSet must keep its state in /var/lib/multiverse")
        env = {e["name"]: e for e in c.get("env", [])}
        if env.get("MULTIVERSE_ADVERTISE_HOST", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "status.podIP":
            problems.append("the GPU DaemonSet must advertise its pod IP (MULTIVERSE_ADVERTISE_HOST)")

    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print(f"ok: {len(docs)} resources")


if __name__ == "__main__":
    main()
