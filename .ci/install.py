"""Install edgekit[dev] into a virtual environment, with uv when it can be had, else with pip.

`make install` (and so `make test`, `make demo` and `.ci/run`) calls this with the venv's Python:

    .venv/bin/python .ci/install.py -c constraints.txt -e '.[dev]'

Why: on this project's 2-core machines pip filled a fresh venv in 150 s (2026-12-07), a quarter of
the CI budget. It unpacks and byte-compiles one wheel at a time. uv resolves the same versions from
the same indexes (checked: `pip freeze` of both venvs listed the same 139 releases) and fills the
venv in 45 s, byte-compiled too.

uv does not read pip's configuration, so the settings this machine gives pip (`pip config list`:
find-links, index URLs, global constraints, the CA bundle, from pip.conf or PIP_* variables) are
handed to uv as options. `--index-strategy unsafe-best-match` makes uv pick the best version
across every index, as pip does. uv itself comes from the same indexes, pinned in constraints.txt.

Any failure on the uv path (uv not installable, an option uv refuses, a resolution error) prints
one line and installs with pip as before, so this never makes an install fail that pip would
have finished. EDGEKIT_INSTALLER=pip skips uv.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# pip setting → uv option; a setting holds a space- or newline-separated list
LIST_OPTIONS = {"find-links": "--find-links", "extra-index-url": "--extra-index-url", "constraint": "-c"}
ONE_OPTIONS = {"index-url": "--index-url"}
FLAGS = {"no-index": "--no-index"}


def pip_settings(python: str) -> dict[str, list[str]]:
    """pip's effective settings, from `pip config list` (config files and PIP_* variables)."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True).stdout
    settings: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"^[^.]*\.([a-z-]+)='(.*)'$", line.strip())
        if m:
            settings.setdefault(m.group(1), []).extend(m.group(2).split())
    return settings


def uv_options(settings: dict[str, list[str]]) -> tuple[list[str], dict[str, str]]:
    args = ["--index-strategy", "unsafe-best-match"]
    for key, flag in LIST_OPTIONS.items():
        for value in dict.fromkeys(settings.get(key, [])):   # once each, in pip's order
            args += [flag, value]
    for key, flag in ONE_OPTIONS.items():
        if settings.get(key):
            args += [flag, settings[key][-1]]
    for key, flag in FLAGS.items():
        if settings.get(key, [""])[-1].lower() in ("1", "true", "yes", "on"):
            args.append(flag)
    env = {}
    cert = (settings.get("cert") or [None])[-1]
    if cert and Path(cert).is_file():
        env["SSL_CERT_FILE"] = cert
    return args, env


def find_uv(python: str, constraints: list[str], log) -> str:
    """uv on PATH, else uv installed into this venv by pip (a few seconds)."""
    here = Path(python).parent / "uv"
    if here.is_file():
        return str(here)
    on_path = shutil.which("uv")
    if on_path:
        return on_path
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *constraints, "uv"],
                   stdout=log, stderr=subprocess.STDOUT, check=True)
    return str(here)


def main(argv: list[str]) -> int:
    python = sys.executable
    constraints = [a for i, a in enumerate(argv) if a == "-c" or (i and argv[i - 1] == "-c")]
    log_path = Path(python).parent.parent / "pip.log"
    with open(log_path, "w") as log:
        if os.environ.get("EDGEKIT_INSTALLER", "auto") != "pip":
            try:
                uv = find_uv(python, constraints, log)
                args, env = uv_options(pip_settings(python))
                log.write(f"uv pip install {' '.join(args + argv)}\n")
                log.flush()
                subprocess.run([uv, "pip", "install", "--python", python, "--compile-bytecode", "--quiet",
                                *args, *argv], stdout=log, stderr=subprocess.STDOUT, check=True,
                               env={**os.environ, **env})
                return 0
            except (OSError, subprocess.CalledProcessError) as exc:
                why = f"exit {exc.returncode}" if isinstance(exc, subprocess.CalledProcessError) else str(exc)
                print(f"uv install did not complete ({why}); installing with pip instead (log: {log_path})")
                log.write(f"\nuv failed ({why}); pip follows\n")
                log.flush()
        rc = subprocess.run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *argv],
                            stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        lines = [ln for ln in log_path.read_text().splitlines() if not ln.startswith("WARNING: Location")]
        print("\n".join(lines[-30:]))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
