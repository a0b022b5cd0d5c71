"""The distribution as users install it: one top-level package, a vehicle install without the
server's dependencies. Builds the wheel from this checkout and installs it into fresh venvs."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_ONLY = ("flask", "sqlalchemy", "boto3", "alembic", "gunicorn", "psycopg")

pytestmark = pytest.mark.slow


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, ROOT)
    (built,) = out.glob("overdrive-*.whl")
    return built


def dist_info(wheel: Path) -> str:
    name, version = wheel.name.split("-")[:2]
    return f"{name}-{version}.dist-info"


def fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin" / "python"


def site_packages(python: Path) -> set[str]:
    found = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    return {p.name for p in Path(found.stdout.strip()).iterdir()}


def test_the_wheel_has_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top_level = z.read(next(n for n in names if n.endswith(".dist-info/top_level.txt")))
    assert top_level.decode().split() == ["overdrive"]
    assert {n.split("/")[0] for n in names} == {"overdrive", dist_info(wheel)}
    for role in ("server", "client", "signing", "rollout_policies"):
        assert f"overdrive/{role}/__init__.py" in names
    # Package data travels with the packages it belongs to.
    for data in (
        "overdrive/rollout_policies/presets/canary.yaml",
        "overdrive/client/bootscripts/grub.cfg",
        "overdrive/client/systemd/overdrive-post-boot.service",
        "overdrive/server/migrations/env.py",
        "overdrive/server/dashboard/templates/dashboard/campaign.html",
        "overdrive/server/dashboard/static/dashboard.js",
    ):
        assert data in names, data


def test_installing_adds_only_overdrive(wheel: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "bare")
    before = site_packages(python)
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", wheel)
    added = site_packages(python) - before
    assert added == {"overdrive", dist_info(wheel)}


def test_a_vehicle_install_has_no_server_dependencies(wheel: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "vehicle")
    run(python, "-m", "pip", "install", "--quiet", wheel)
    installed = {name.lower().split("-")[0] for name in site_packages(python)}
    assert not installed & set(SERVER_ONLY), installed & set(SERVER_ONLY)
    overdrive = python.parent / "overdrive"
    assert "Usage: overdrive vehicle" in run(overdrive, "vehicle", "--help").stdout
    assert "Usage: overdrive simulate" in run(overdrive, "simulate", "--help").stdout
    # The role packages import under the namespace, and nothing else of those names exists.
    probe = (
        "import importlib.util as u, overdrive.client.cli, overdrive.rollout_policies\n"
        "print([m for m in ('server', 'client', 'signing', 'rollout_policies') if u.find_spec(m)])"
    )
    assert run(python, "-c", probe, cwd=tmp_path).stdout.strip() == "[]"
    # A server command says what is missing instead of failing with a traceback.
    refused = subprocess.run(
        [str(overdrive), "server", "migrate", "--db", f"sqlite:///{tmp_path / 'x.db'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1, refused
    assert "pip install 'overdrive[server]'" in refused.stderr
    assert "Traceback" not in refused.stderr and "internal error" not in refused.stderr
