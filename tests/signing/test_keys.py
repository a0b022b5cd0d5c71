"""``overdrive keys generate`` and loading keys as signers."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

from overdrive.keys import KeyDirectory, env_passphrase, public_key_from_pem
from overdrive.signing.errors import KeyError_
from tests.conftest import Cli


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa-p256"])
def test_generate_encrypted_key_loads_as_signer(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, key_type: str
) -> None:
    monkeypatch.setenv("PASS", "correct horse")
    result = cli(
        "keys",
        "generate",
        "alice",
        "--type",
        key_type,
        "--dir",
        tmp_path,
        "--passphrase-env",
        "PASS",
    )
    assert result.code == 0, result.stderr
    private = (tmp_path / "alice").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in private
    assert stat.S_IMODE((tmp_path / "alice").stat().st_mode) == 0o600
    assert b"PRIVATE" not in (tmp_path / "alice.pub").read_bytes()
    key = public_key_from_pem((tmp_path / "alice.pub").read_bytes(), "alice.pub")
    assert key.keyid in result.stdout
    signer = KeyDirectory(tmp_path, env_passphrase("PASS")).signer(key)
    assert isinstance(signer, CryptoSigner)
    key.verify_signature(signer.sign(b"payload"), b"payload")


def test_wrong_passphrase_is_one_clear_error(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PASS", "right")
    assert cli("keys", "generate", "k", "--dir", tmp_path, "--passphrase-env", "PASS").code == 0
    key = public_key_from_pem((tmp_path / "k.pub").read_bytes(), "k.pub")
    monkeypatch.setenv("PASS", "wrong")
    with pytest.raises(KeyError_, match="wrong passphrase for key 'k'"):
        KeyDirectory(tmp_path, env_passphrase("PASS")).signer(key)
    monkeypatch.delenv("PASS")
    with pytest.raises(KeyError_, match=r"\$PASS is not set"):
        KeyDirectory(tmp_path, env_passphrase("PASS")).signer(key)


def test_insecure_key_is_loudly_labelled(tmp_path: Path, cli: Cli) -> None:
    result = cli("keys", "generate", "demo", "--dir", tmp_path, "--insecure-no-passphrase")
    assert result.code == 0
    assert "NOT encrypted" in result.stderr
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "demo").read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["../evil", "--insecure-no-passphrase"], "invalid key name"),
        (["x", "--type", "rsa", "--insecure-no-passphrase"], "Invalid value for '--type'"),
        (["x"], "no passphrase"),  # stdin is not a terminal here
        (["x", "--passphrase-env", "UNSET_VAR_FOR_TEST"], "is not set"),
    ],
)
def test_generate_rejects_bad_input(
    tmp_path: Path, cli: Cli, args: list[str], message: str
) -> None:
    result = cli("keys", "generate", *args, "--dir", tmp_path)
    assert result.code != 0
    assert message in result.stderr
    assert len(result.error_lines) <= 3  # click usage errors carry a usage line and a hint


def test_generate_refuses_to_overwrite(tmp_path: Path, cli: Cli) -> None:
    assert cli("keys", "generate", "k", "--dir", tmp_path, "--insecure-no-passphrase").code == 0
    before = (tmp_path / "k").read_bytes()
    result = cli("keys", "generate", "k", "--dir", tmp_path, "--insecure-no-passphrase")
    assert result.code == 1
    assert result.error_lines[-1].startswith("error:") and "refusing to overwrite" in result.stderr
    assert (tmp_path / "k").read_bytes() == before
