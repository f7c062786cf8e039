#!/usr/bin/env python3
"""The lab service images as one `docker load` archive, written to stdout.

    python3 archive.py key ENTRY     the images' recipe (their label), from the rootfs entry
    python3 archive.py write ENTRY   the archive: pipe it into `docker load`

Two layers shared by every image, so the engine unpacks the Debian tree once however many
names it carries (`docker import` would unpack it once per name):
  1. ENTRY/rootfs.tar: the cached Debian root filesystem (scripts/lab-images/build-rootfs)
  2. the project's own files: the entrypoints (scripts/lab-images/bin/) in /usr/local/bin
     and lab/agent.py, lab/ollama.py in /opt/lab; small, made here, deterministic, so a
     change to them reloads the images without rebuilding the tree.
Each name is an image config (command, environment) over those layers, in the format
`docker save` writes (manifest.json, one config file per image, one folder per layer).
Standard library only: it runs with the host's python3 before any venv exists.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LABEL_RECIPE = "org.resource-supervisor.lab.recipe"
LABEL_IMAGE = "org.resource-supervisor.lab.image"
FIXED_MTIME = 946684800  # 2000-01-01: the lab layer's bytes depend on its files only
SECOND_NS = 1_000_000_000
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# (path in the image, file in the repository, mode)
LAB_FILES = [
    ("usr/local/bin/lab-postgres", HERE / "bin" / "lab-postgres", 0o755),
    ("usr/local/bin/lab-redis", HERE / "bin" / "lab-redis", 0o755),
    ("opt/lab/agent.py", REPO / "lab" / "agent.py", 0o644),
    ("opt/lab/ollama.py", REPO / "lab" / "ollama.py", 0o644),
]
LAB_DIRS = ["opt/lab"]  # parents the Debian tree lacks


def build_info(entry: Path) -> dict[str, str]:
    out = {}
    for line in (entry / "build-info").read_text().splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k] = v
    return out


def health(*test: str) -> dict:
    """A health check as Rule 2.2 writes one: every 30 s, a client on loopback. A container
    may change any field (`healthcheck={"interval": ...}` keeps this test; Docker merges
    field by field) or turn it off (`{"test": ["NONE"]}`)."""
    return {"Test": list(test), "Interval": 30 * SECOND_NS, "Timeout": 5 * SECOND_NS,
            "StartPeriod": 10 * SECOND_NS, "Retries": 3}


def images(pg_major: str) -> dict[str, dict]:
    """name -> the image's runtime config (docker's "config" object)."""
    common = ["LANG=C.UTF-8"]
    return {
        "lab/base": {"Env": [f"PATH={BASE_PATH}", *common], "Cmd": ["/bin/bash"]},
        "lab/postgres": {
            "Env": [f"PATH=/usr/lib/postgresql/{pg_major}/bin:{BASE_PATH}", *common,
                    "PGDATA=/var/lib/postgresql/data"],
            "Cmd": ["/usr/local/bin/lab-postgres"],
            "Healthcheck": health("CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-U", "postgres"),
            # SIGTERM is PostgreSQL's "smart" shutdown, which waits for every session
            "StopSignal": "SIGINT",
        },
        "lab/redis": {
            "Env": [f"PATH={BASE_PATH}", *common], "Cmd": ["/usr/local/bin/lab-redis"],
            "Healthcheck": health("CMD-SHELL", "redis-cli -h 127.0.0.1 ping | grep -qx PONG"),
        },
        "lab/agent": {
            "Env": [f"PATH={BASE_PATH}", *common, "PYTHONUNBUFFERED=1",
                    "PYTHONDONTWRITEBYTECODE=1", "AGENT_PORT=10210", "AGENT_BEHAVIOUR=idle"],
            "Cmd": ["python3", "/opt/lab/agent.py"],
            "Healthcheck": health("CMD-SHELL", "curl -fsS -o /dev/null http://127.0.0.1:$AGENT_PORT/health"),
        },
        "lab/ollama": {
            "Env": [f"PATH={BASE_PATH}", *common, "PYTHONUNBUFFERED=1",
                    "PYTHONDONTWRITEBYTECODE=1", "OLLAMA_HOST=127.0.0.1:11434",
                    "OLLAMA_KEEP_ALIVE=5m"],
            "Cmd": ["python3", "/opt/lab/ollama.py"],
            "Healthcheck": health("CMD-SHELL", "curl -fsS -o /dev/null http://$OLLAMA_HOST/api/version"),
        },
    }


def lab_layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in LAB_DIRS:
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, FIXED_MTIME
            tar.addfile(ti)
        for dest, src, mode in LAB_FILES:
            data = src.read_bytes()
            ti = tarfile.TarInfo(dest)
            ti.size, ti.mode, ti.mtime = len(data), mode, FIXED_MTIME
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def recipe(entry: Path, layer: bytes) -> str:
    h = hashlib.sha256()
    h.update((entry / "rootfs.sha256").read_bytes())
    h.update(layer)
    h.update(Path(__file__).read_bytes())
    return f"{entry.name}-{h.hexdigest()[:16]}"


def plan(entry: Path) -> tuple[str, bytes, str, dict[str, bytes]]:
    """(recipe, lab layer, base diff_id, name -> config JSON bytes)"""
    info = build_info(entry)
    base_sha = (entry / "rootfs.sha256").read_text().strip()
    layer = lab_layer()
    lab_sha = hashlib.sha256(layer).hexdigest()
    key = recipe(entry, layer)
    created = info.get("built", "2000-01-01T00:00:00Z")
    configs = {}
    for name, cfg in images(info.get("postgres_major", "15")).items():
        cfg = dict(cfg)
        cfg["Labels"] = {LABEL_RECIPE: key, LABEL_IMAGE: name.split("/", 1)[1]}
        cfg.setdefault("WorkingDir", "/")
        doc = {
            "architecture": "amd64", "os": "linux", "created": created, "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{base_sha}", f"sha256:{lab_sha}"]},
            "history": [
                {"created": created, "created_by": "scripts/lab-images/build-rootfs "
                 f"(debootstrap bookworm, recipe {entry.name})"},
                {"created": created, "created_by": "scripts/lab-images/archive.py (entrypoints, lab/)"},
            ],
        }
        configs[name] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return key, layer, base_sha, configs


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, FIXED_MTIME
    tar.addfile(ti, io.BytesIO(data))


def write(entry: Path, out) -> None:
    _key, layer, base_sha, configs = plan(entry)
    lab_sha = hashlib.sha256(layer).hexdigest()
    manifest = []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        rootfs = entry / "rootfs.tar"
        ti = tarfile.TarInfo(f"{base_sha}/layer.tar")
        ti.size, ti.mode, ti.mtime = rootfs.stat().st_size, 0o644, FIXED_MTIME
        with rootfs.open("rb") as f:
            tar.addfile(ti, f)
        add_bytes(tar, f"{lab_sha}/layer.tar", layer)
        for name, doc in configs.items():
            cfg_name = hashlib.sha256(doc).hexdigest() + ".json"
            add_bytes(tar, cfg_name, doc)
            manifest.append({"Config": cfg_name, "RepoTags": [f"{name}:latest"],
                             "Layers": [f"{base_sha}/layer.tar", f"{lab_sha}/layer.tar"]})
        add_bytes(tar, "manifest.json", json.dumps(manifest).encode())


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("key", "write", "names"):
        print(__doc__, file=sys.stderr)
        return 2
    entry = Path(argv[2])
    if not (entry / "built.ok").is_file():
        print(f"archive.py: {entry} is not a built rootfs entry", file=sys.stderr)
        return 2
    if argv[1] == "key":
        print(plan(entry)[0])
    elif argv[1] == "names":
        print("\n".join(plan(entry)[3]))
    else:
        write(entry, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
