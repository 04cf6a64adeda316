#!/usr/bin/env python3
"""Checks deploy/Dockerfile by rule, since no Docker engine runs here (ctest label deploy).

    dockerfile_lint.py DOCKERFILE BUILD_DIR VALUES_YAML      lint; exit 1 on any finding
    dockerfile_lint.py --self-test DOCKERFILE BUILD_DIR VALUES_YAML
        also break the Dockerfile in known ways and require each break to be found

Rules (hadolint's numbers where one exists):
  pinned-base   every FROM names a tagged image, never :latest or untagged (DL3006/DL3007)
  targets       the stages the chart and deploy/README.md name exist
  non-root      every target stage ends as a numeric non-zero USER (DL3002)
  exec-form     every target's ENTRYPOINT is a JSON array (DL3025) of a file COPY'd in
  apt           apt-get install with -y and --no-install-recommends, after apt-get update
                and followed by removing /var/lib/apt/lists in the same RUN (DL3009,
                DL3014, DL3015); no upgrade (DL3005), no sudo (DL3004), no ADD (DL3020),
                no piping a download into a shell (DL4006-like)
  runtime-only  no -dev package or compiler outside the builder stage
  libraries     each target stage installs (directly or through Debian dependencies)
                the package of every shared library its binary, as built in BUILD_DIR,
                loads (ldd + dpkg -S + dpkg Depends on this machine, which runs the same
                Debian release the image does)
  paths         every file COPY'd from the builder exists in BUILD_DIR at that path
  ports         EXPOSE and PARLEY_GRPC_ADDR / PARLEY_ADMIN_ADDR match the chart's ports
"""
import functools
import json
import os
import re
import shlex
import subprocess
import sys

SERVICE_STAGES = {"gateway": "gateway", "session": "session", "sandbox": "sandbox", "store": "store"}
TARGETS = ["gateway", "session", "sandbox", "store", "sandbox-runtime"]
BUILDER = "builder"
# What debian:12-slim has without installing anything and every C++ binary loads.
BASE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6"}
COMPILERS = re.compile(r"^(g\+\+|gcc|clang|cmake|make|ninja-build|build-essential|golang-go)(-\d+)?$")


class Stage:
    def __init__(self, name, base):
        self.name, self.base = name, base
        self.instructions = []  # (keyword, argument text)


def parse(text):
    """Instructions by stage; comments dropped, continuation lines joined."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    args, stages = {}, []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        if keyword == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            image = re.sub(r"\$\{(\w+)\}", lambda a: args.get(a.group(1), ""), m.group(1))
            stages.append(Stage(m.group(2) or image, image))
            continue
        if stages:
            stages[-1].instructions.append((keyword, rest))
    return {s.name: s for s in stages}, stages


def chain(stages, name):
    """A stage and the stages it is built FROM, nearest first."""
    out = []
    while name in stages:
        out.append(stages[name])
        name = stages[name].base
    return out


def installed_packages(stage_chain):
    pkgs = set()
    for stage in stage_chain:
        for keyword, rest in stage.instructions:
            if keyword == "RUN":
                for m in re.finditer(r"apt-get install ([^&;|]*)", rest):
                    pkgs |= {w for w in m.group(1).split() if not w.startswith("-")}
    return pkgs


@functools.lru_cache(maxsize=None)
def installed_dependencies():
    """{package: the packages it Depends or Pre-Depends on} for everything dpkg has here."""
    r = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Depends},${Pre-Depends}\n"],
                       capture_output=True, text=True, check=True)
    deps = {}
    for line in r.stdout.splitlines():
        pkg, _, depends = line.partition("\t")
        names = set()
        for alternative in depends.split(","):
            for name in alternative.split("|"):
                name = name.strip().split(" ")[0].split(":")[0]
                if name:
                    names.add(name)
        deps[pkg] = names
    return deps


def dependency_closure(pkgs):
    """pkgs and everything they depend on."""
    seen, todo = set(), list(pkgs)
    while todo:
        pkg = todo.pop()
        if pkg not in seen:
            seen.add(pkg)
            todo.extend(installed_dependencies().get(pkg, ()))
    return seen


@functools.lru_cache(maxsize=None)
def library_packages(binary):
    """The Debian packages owning the shared libraries a binary loads."""
    r = subprocess.run(["ldd", binary], capture_output=True, text=True)
    paths = re.findall(r"=>\s+(/\S+)", r.stdout)
    # Debian 12 is usr-merged: dpkg may know a library by its /lib or its /usr/lib path.
    candidates = {}
    for path in paths:
        real = os.path.realpath(path)
        candidates[path] = [path, real, re.sub(r"^/usr", "", real), re.sub(r"^/usr", "", path)]
    flat = sorted({c for cs in candidates.values() for c in cs})
    q = subprocess.run(["dpkg", "-S"] + flat, capture_output=True, text=True)
    owner = {}
    for line in q.stdout.splitlines():
        pkgs, _, path = line.partition(": ")
        owner[path.strip()] = pkgs.split(",")[0].split(":")[0].strip()
    pkgs = set()
    for path, cs in candidates.items():
        found = next((owner[c] for c in cs if c in owner), None)
        pkgs.add(found or "?" + path)
    return frozenset(pkgs)


def chart_ports(values_file):
    """{service: (grpcPort, adminPort)} from the chart's values.yaml, without a YAML library."""
    ports, service = {}, None
    for line in open(values_file):
        top = re.match(r"^(\w+):", line)
        if top:
            service = top.group(1)
        m = re.match(r"^  (grpcPort|adminPort): (\d+)", line)
        if m and service in SERVICE_STAGES:
            ports.setdefault(service, {})[m.group(1)] = int(m.group(2))
    return ports


def lint(text, build_dir, values_file):
    findings = []
    add = lambda rule, where, msg: findings.append(f"{rule}: {where}: {msg}")
    stages, ordered = parse(text)
    for s in ordered:
        if s.base in stages:
            continue
        if ":" not in s.base or s.base.endswith(":latest"):
            add("pinned-base", s.name, f"FROM {s.base} is not pinned to a tag")
    for t in TARGETS + [BUILDER, "runtime"]:
        if t not in stages:
            add("targets", t, "no such stage")
    for s in ordered:
        for keyword, rest in s.instructions:
            if keyword == "ADD":
                add("apt", s.name, "ADD: use COPY")
            if keyword != "RUN":
                continue
            if re.search(r"\bsudo\b", rest):
                add("apt", s.name, "sudo in RUN")
            if re.search(r"apt-get (dist-)?upgrade", rest):
                add("apt", s.name, "apt-get upgrade")
            if re.search(r"(curl|wget)[^|;&]*\|\s*(ba|z)?sh", rest):
                add("apt", s.name, "a download piped into a shell")
            if "apt-get install" in rest:
                if not re.search(r"apt-get install[^&;]*\s-y\b", rest):
                    add("apt", s.name, "apt-get install without -y")
                if "--no-install-recommends" not in rest:
                    add("apt", s.name, "apt-get install without --no-install-recommends")
                if "apt-get update" not in rest.split("apt-get install")[0]:
                    add("apt", s.name, "apt-get install without apt-get update before it in the same RUN")
                if "rm -rf /var/lib/apt/lists" not in rest.split("apt-get install")[1]:
                    add("apt", s.name, "apt-get install without removing /var/lib/apt/lists after it")
        if s.name != BUILDER:
            for pkg in installed_packages([s]):
                if pkg.endswith("-dev") or COMPILERS.match(pkg):
                    add("runtime-only", s.name, f"installs build package {pkg}")
            for keyword, rest in s.instructions:
                if keyword == "RUN" and re.search(r"scripts/setup|cmake|ninja", rest):
                    add("runtime-only", s.name, "builds or runs scripts/setup outside the builder")
    for t in [t for t in TARGETS if t in stages]:
        c = chain(stages, t)
        users = [rest for s in c for keyword, rest in reversed(s.instructions) if keyword == "USER"]
        user = users[0] if users else "root"
        uid = user.split(":")[0]
        if not uid.isdigit() or int(uid) == 0:
            add("non-root", t, f"runs as USER {user} (needs a numeric non-zero uid)")
        entry = next((rest for s in c for keyword, rest in reversed(s.instructions)
                      if keyword == "ENTRYPOINT"), None)
        try:
            argv = json.loads(entry) if entry else None
        except ValueError:
            argv = None
        if not isinstance(argv, list) or not argv:
            add("exec-form", t, f"ENTRYPOINT {entry!r} is not a JSON array")
        else:
            copied = [rest.split()[-1] for s in c for keyword, rest in s.instructions if keyword == "COPY"]
            if argv[0] not in copied:
                add("exec-form", t, f"ENTRYPOINT {argv[0]} is not COPY'd into the image")
    for s in ordered:
        for keyword, rest in s.instructions:
            if keyword != "COPY" or f"--from={BUILDER}" not in rest:
                continue
            src = shlex.split(rest)[-2]
            local = os.path.join(build_dir, os.path.relpath(src, "/src/build"))
            if not src.startswith("/src/build/") or not os.path.exists(local):
                add("paths", s.name, f"COPY {src}: the build makes no {local}")
    for stage in [t for t in TARGETS if t in stages]:
        c = chain(stages, stage)
        copied = [shlex.split(rest)[-2] for s in c for keyword, rest in s.instructions
                  if keyword == "COPY" and f"--from={BUILDER}" in rest]
        have = dependency_closure(installed_packages(c)) | BASE_PACKAGES
        for src in copied:
            local = os.path.join(build_dir, os.path.relpath(src, "/src/build"))
            if not os.path.exists(local):
                continue
            for pkg in sorted(set(library_packages(local)) - have):
                add("libraries", stage, f"{os.path.basename(src)} loads a library of {pkg}, "
                    "which the image does not install")
    for svc, stage in SERVICE_STAGES.items():
        if stage not in stages:
            continue
        c = chain(stages, stage)
        want = chart_ports(values_file).get(svc, {})
        exposed = {int(p) for s in c for keyword, rest in s.instructions if keyword == "EXPOSE"
                   for p in rest.split()}
        env = " ".join(rest for s in c for keyword, rest in s.instructions if keyword == "ENV")
        for key, var in (("grpcPort", "PARLEY_GRPC_ADDR"), ("adminPort", "PARLEY_ADMIN_ADDR")):
            port = want.get(key)
            if port is None:
                add("ports", stage, f"the chart's values.yaml has no {svc}.{key}")
                continue
            if port not in exposed:
                add("ports", stage, f"does not EXPOSE the chart's {svc}.{key} {port}")
            if not re.search(rf"{var}=\S*:{port}\b", env):
                add("ports", stage, f"{var} does not listen on the chart's {svc}.{key} {port}")
    return findings


# Breaks the self-test makes, each with (a part of) the finding that must catch it.
MUTATIONS = [
    ("a service running as root", "FROM runtime AS gateway\n", "FROM runtime AS gateway\nUSER root\n", "non-root"),
    ("an untagged base image", "ARG DEBIAN_IMAGE=debian:12-slim", "ARG DEBIAN_IMAGE=debian", "pinned-base"),
    ("install recommends", "install -y --no-install-recommends bubblewrap", "install -y bubblewrap",
     "without --no-install-recommends"),
    ("apt lists left in a layer", " \\\n && rm -rf /var/lib/apt/lists/*\nUSER 10001:10001\nCOPY --from=builder /src/build/sandbox-svc/parley-sandbox",
     "\nUSER 10001:10001\nCOPY --from=builder /src/build/sandbox-svc/parley-sandbox", "without removing /var/lib/apt/lists"),
    ("a -dev package at run time", "libcurl4 \\", "libcurl4 libpq-dev \\", "runtime-only"),
    ("a library the store loads left out", "libpqxx-6.4 ", "", "libraries"),
    ("a shell-form ENTRYPOINT", 'ENTRYPOINT ["/usr/local/bin/parley-store"]',
     "ENTRYPOINT /usr/local/bin/parley-store", "exec-form"),
    ("a binary path the build does not make", "/src/build/gateway/parley-gateway /usr",
     "/src/build/parley-gateway /usr", "paths"),
    ("a port the chart does not use", "PARLEY_GRPC_ADDR=0.0.0.0:7071", "PARLEY_GRPC_ADDR=0.0.0.0:7171", "ports"),
]


def main(argv):
    self_test = "--self-test" in argv
    argv = [a for a in argv if a != "--self-test"]
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    dockerfile, build_dir, values_file = argv
    text = open(dockerfile).read()
    findings = lint(text, build_dir, values_file)
    for f in findings:
        print(f"FAIL {f}")
    print(f"{dockerfile}: {len(findings)} findings")
    failed = bool(findings)
    if self_test:
        for what, old, new, rule in MUTATIONS:
            if old not in text:
                print(f"FAIL self-test: cannot make '{what}': {old!r} is not in the Dockerfile")
                failed = True
                continue
            caught = [f for f in lint(text.replace(old, new, 1), build_dir, values_file)
                      if f.startswith(rule + ":") or rule in f]
            print(f"{'ok  ' if caught else 'FAIL'} self-test: {what} -> {caught[:1] or 'not caught by ' + rule}")
            failed = failed or not caught
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
