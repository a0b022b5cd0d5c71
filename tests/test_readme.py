"""The README's quickstarts, run as written: every ``sh`` block under a "Quickstart" heading, in
order, in one shell, in an empty directory, with this checkout's ``overdrive`` on the PATH.

Two things stand in for the person at the keyboard: passphrases come from the environment
variables the README names (``OVERDRIVE_PASSPHRASE_<KEY>``), and a command the README starts in
the background (``… &``, the rollout server) is waited for until its ``/readyz`` answers before
the next line runs. The server's port is a free one instead of 8080.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)

pytestmark = pytest.mark.slow


def quickstart_blocks(text: str) -> list[tuple[str, str]]:
    """(heading, shell code) for every sh block under a '## Quickstart…' heading, in order."""
    blocks = []
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        heading = section.splitlines()[0]
        if heading.startswith("Quickstart"):
            blocks += [(heading, code) for code in BLOCK.findall(section)]
    return blocks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


WAIT_FOR_SERVER = """
for _ in $(seq 1 300); do
  python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \\
      "http://127.0.0.1:{port}/readyz" 2>/dev/null && break
  sleep 0.2
done
"""


def script(blocks: list[tuple[str, str]], port: int) -> str:
    """One bash script: the blocks in order, each background start followed by a readiness wait."""
    lines = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for heading, code in blocks:
        lines.append(f"echo '### {heading}'")
        joined = code.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.replace("8080", str(port))
            lines.append(line)
            if line.rstrip().endswith("&"):
                lines.append(WAIT_FOR_SERVER.format(port=port))
    return "\n".join(lines) + "\n"


def test_readme_has_the_three_quickstarts() -> None:
    headings = [h for h, _code in quickstart_blocks(README.read_text("utf-8"))]
    for who in ("release engineers", "operators", "vehicles"):
        assert any(who in h for h in headings), headings


def test_the_quickstarts_run_as_written(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "overdrive").exists(), "run from the project's venv (make test)"
    port = free_port()
    code = script(quickstart_blocks(README.read_text("utf-8")), port)
    (tmp_path / "quickstart.sh").write_text(code)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
        "OVERDRIVE_PASSPHRASE_ROOT": "root pass phrase",
        "OVERDRIVE_PASSPHRASE_TARGETS": "targets pass phrase",
        "OVERDRIVE_PASSPHRASE_SNAPSHOT": "snapshot pass phrase",
        "OVERDRIVE_PASSPHRASE_TIMESTAMP": "timestamp pass phrase",
        **{
            f"OVERDRIVE_PASSPHRASE_DIRECTOR_{role}": f"director {role.lower()} pass phrase"
            for role in ("ROOT", "TARGETS", "SNAPSHOT", "TIMESTAMP")
        },
    }
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(tmp_path / "quickstart.sh")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    out = result.stdout
    # What the walkthrough promises at its end: the car committed 1.1 from the campaign.
    vehicles = out.split("### Quickstart: vehicles", 1)[1]
    assert "committed 1.1 in slot B" in vehicles
    assert "slot B: 1.1" in vehicles
