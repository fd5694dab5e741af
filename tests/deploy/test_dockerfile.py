"""No Docker engine runs here, so the image cannot be built in a test. What can be
checked: the build stage runs the same dependency script and make targets as CI, the
runtime stage installs a package for every library the binaries link, runs as a
non-root user, exposes the ports and has a health check."""
import os
import re
import subprocess

from conftest import BUILD, ROOT


def dockerfile_stages():
    stages, current = {}, None
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I)
        if m:
            current = m.group(2)
            stages[current] = {"from": m.group(1), "lines": []}
        elif line and not line.startswith("#") and current:
            stages[current]["lines"].append(line)
    return stages


def makefile_targets():
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read()
    return {m.group(1): m.group(2).split() for m in re.finditer(r"^([a-z-]+):([^=\n]*)$", text, re.M)}, text


def test_build_stage_runs_what_ci_runs():
    stages = dockerfile_stages()
    assert stages["build"]["from"] == stages["runtime"]["from"] == "debian:bookworm-slim"
    runs = [l[4:] for l in stages["build"]["lines"] if l.startswith("RUN ")]
    targets, makefile = makefile_targets()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert re.search(r"^\s*make test\b", ci, re.M), "CI runs make test"
    ci_targets = set(targets["test"])
    # What make test pulls in, transitively.
    pending = list(ci_targets)
    while pending:
        for dep in targets.get(pending.pop(), []):
            if dep not in ci_targets:
                ci_targets.add(dep)
                pending.append(dep)
    scripts, made = [], []
    for run in runs:
        scripts += re.findall(r"bash (scripts/\S+)", run)
        made += re.findall(r"make (\w[\w-]*)", run)
    assert scripts and made
    for script in scripts:
        assert os.path.isfile(os.path.join(ROOT, script)), script
        # The same script make deps (which make test needs) runs.
        assert f"bash {script}" in makefile
    assert "deps" in ci_targets and "bash scripts/deps.sh" in makefile
    for target in made:
        assert target in targets, f"make {target} is not a Makefile target"
    assert "build" in made and "build" in ci_targets, "the image is built by CI's own build target"
    # The default repository: the same target make serve uses.
    assert "repository" in made and "repository" in targets["serve"]


def test_runtime_stage_has_a_package_for_every_linked_library():
    runtime = " ".join(dockerfile_stages()["runtime"]["lines"])
    installed = set(re.search(r"apt-get install -y --no-install-recommends (.*?)&&", runtime).group(1).split())
    base = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}  # in debian:bookworm-slim
    for binary in ("care-server", "care-client"):
        needed = re.findall(r"NEEDED\s+(\S+)", subprocess.run(["objdump", "-p", os.path.join(BUILD, binary)],
                                                               capture_output=True, text=True, check=True).stdout)
        for library in needed:
            owner = subprocess.run(["dpkg", "-S", f"*/{library}"], capture_output=True, text=True).stdout
            packages = {line.split(":")[0] for line in owner.splitlines()}
            assert packages & (installed | base), f"{binary} needs {library} ({packages}), not installed"


def test_runtime_stage_settings():
    lines = dockerfile_stages()["runtime"]["lines"]
    text = "\n".join(lines)
    user = [l.split()[1] for l in lines if l.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^EXPOSE 50051 9091 8000$", text, re.M)
    # The exposed ports are the ones the entrypoint serves on.
    assert '"--port=50051", "--metrics_port=9091", "--http_port=8000"' in text
    assert re.search(r'HEALTHCHECK .*CMD \["care-client", "health"', text)
    assert 'VOLUME ["/models"]' in text
    assert "--model_repository=/models" in text
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = f.read().split()
    assert "build/" in ignored and "models/" in ignored


def test_runtime_stage_carries_torchvisions_operators_with_their_libraries():
    """Mask R-CNN graphs call torchvision's nms and roi_align: the image copies the
    library from the build stage to where --torchvision_ops=auto looks, and installs a
    package for each library it links."""
    runtime = dockerfile_stages()["runtime"]["lines"]
    copies = [l.split()[-2:] for l in runtime if l.startswith("COPY --from=build") and "torchvision" in l]
    assert len(copies) == 1, runtime
    source, target = copies[0]
    assert os.path.isfile(source), f"{source}: not on the build machine (python3-torchvision)"
    assert target == "/usr/lib/careserve/torchvision_ops.so"
    with open(os.path.join(ROOT, "server", "engine", "torch_model.cc")) as f:
        assert f'"{target}"' in f.read(), "care-server does not look there"
    installed = set(re.search(r"apt-get install -y --no-install-recommends (.*?)&&", " ".join(runtime))
                    .group(1).split())
    needed = re.findall(r"NEEDED\s+(\S+)", subprocess.run(["objdump", "-p", source], capture_output=True,
                                                           text=True, check=True).stdout)
    assert "libtorch_cpu.so.1.13" in needed
    for library in needed:
        owner = subprocess.run(["dpkg", "-S", f"*/{library}"], capture_output=True, text=True).stdout
        packages = {line.split(":")[0] for line in owner.splitlines()}
        assert packages & (installed | {"libc6", "libgcc-s1", "libstdc++6"}), f"{library} ({packages})"
