"""Reading policy files: JSON and YAML, the YAML pitfalls handled, every failure one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from overdrive.rollout_policies import InvalidPolicy, PolicyFileError, load_policy, read_document
from overdrive.rollout_policies.documents import decode_yaml

YAML_POLICY = """\
name: nightly
maintenance_windows:
  - days: [mon, tue]
    start: 22:00      # unquoted: YAML 1.1 would read the number 1320
    end: 05:30
stages:
  - share: 10%
    soak: 2h
  - share: 100%
"""


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "nightly.yaml"
    path.write_text(YAML_POLICY)
    policy = load_policy(path)
    assert policy.name == "nightly"
    assert policy.to_dict()["maintenance_windows"] == [
        {"days": ["mon", "tue"], "start": "22:00", "end": "05:30"}
    ]


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"stages": [{"share": "100%"}]}')
    assert load_policy(path).summary() == "1 stage: 100%"


def test_json_needs_no_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml now raises ImportError
    path = tmp_path / "p.json"
    path.write_text('{"stages": [{"share": "100%"}]}')
    assert load_policy(path).stages[0].name == "stage-1"


def test_yaml_without_pyyaml_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)
    path = tmp_path / "p.yaml"
    path.write_text(YAML_POLICY)
    with pytest.raises(
        PolicyFileError, match=r"p\.yaml: reading YAML needs PyYAML.*or write the policy as JSON"
    ):
        load_policy(path)


def test_sexagesimal_and_other_scalars() -> None:
    assert decode_yaml("a: 22:00\nb: 1:30.5\nc: 12\nd: 0.5\ne: true", "x") == {
        "a": "22:00",
        "b": "1:30.5",
        "c": 12,
        "d": 0.5,
        "e": True,
    }


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "dup.yaml",
            "stages:\n  - share: 10%\n    soak: 1h\n    soak: 2h\n",
            "dup.yaml: invalid YAML at line 4, column 5: field 'soak' appears twice in one mapping",
        ),
        (
            "dup.json",
            '{"stages": [{"share": "100%", "share": "10%"}]}',
            "dup.json: field 'share' appears twice in one mapping",
        ),
        (
            "broken.yaml",
            "stages:\n  - share: [10%\n",
            "broken.yaml: invalid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'",
        ),
        (
            "broken.json",
            '{"stages": [',
            "broken.json: invalid JSON at line 1, column 13: Expecting value",
        ),
        ("empty.yaml", "", "empty.yaml: the document is empty; a policy needs at least 'stages'"),
        (
            "list.yaml",
            "- 1\n",
            "list.yaml: must be a mapping (a policy with a 'stages' list), got a list",
        ),
        (
            "date.yaml",
            "deadline: 2025-01-01\nstages: [{share: 100%}]\n",
            "date.yaml: deadline: must be a duration like '2h' (units w, d, h, m, s, e.g. '1d12h', "
            "'90m'), got a date",
        ),
    ],
)
def test_file_errors_name_the_file(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises((PolicyFileError, InvalidPolicy)) as caught:
        load_policy(path)
    assert str(caught.value) == message.replace(name, str(path), 1)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(
        PolicyFileError, match=r"missing\.yaml: cannot read: No such file or directory"
    ):
        load_policy(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyFileError, match=r"bin\.yaml: not UTF-8 text \(byte 0\)"):
        read_document(tmp_path / "bin.yaml")
    (tmp_path / "big.json").write_bytes(b" " * (1 << 20) + b"{}")
    with pytest.raises(PolicyFileError, match="larger than 1 MiB"):
        read_document(tmp_path / "big.json")
