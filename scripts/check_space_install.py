"""Does the Space install? Resolve requirements.txt (what a Hugging Face Space runs) against the package
registry in a scratch virtual environment, without installing anything: `pip install --dry-run --report`.

    python scripts/check_space_install.py [--report FILE]

Prints the pinned versions that matter (gradio, vllm, torch) and exits 1 when pip cannot resolve the set
(e.g. ResolutionImpossible between gradio's and vLLM's pillow ranges) or when the resolved Gradio is not the
README front matter's `sdk_version`. Local pip configuration (constraints of this machine) is ignored: a Space
has none.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sdk_version() -> str:
    match = re.search(r"^sdk_version:\s*\"?([\w.]+)", (ROOT / "README.md").read_text(), flags=re.M)
    if not match:
        raise SystemExit("README.md front matter has no sdk_version")
    return match.group(1)


def resolve(report: Path, requirements: Path) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as tmp:
        venv.create(tmp, with_pip=True)
        python = Path(tmp) / "bin" / "python"
        # Like a Space: PyPI alone (no local wheel folders, constraints or config of this machine).
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
        return subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--report",
                str(report),
                "-r",
                str(requirements),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--report", type=Path, default=None, help="keep pip's JSON report here")
    p.add_argument("--requirements", type=Path, default=ROOT / "requirements.txt")
    a = p.parse_args(argv)
    report = a.report or Path(tempfile.mkstemp(suffix=".json")[1])
    out = resolve(report, a.requirements.resolve())
    if out.returncode != 0:
        print(f"{a.requirements.name} does not resolve:\n{out.stderr[-4000:]}", file=sys.stderr)
        return 1
    resolved = json.loads(report.read_text())["install"]
    installs = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in resolved}
    for name in ("moi-demo", "gradio", "vllm", "torch", "pillow", "transformers"):
        print(f"{name}=={installs.get(name, '(not installed)')}")
    if installs.get("gradio") != sdk_version():
        print(
            f"gradio resolves to {installs.get('gradio')}, the Space's sdk_version is {sdk_version()}", file=sys.stderr
        )
        return 1
    if "vllm" not in installs:
        print("requirements.txt does not install vllm", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
