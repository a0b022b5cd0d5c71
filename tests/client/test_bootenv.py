"""Boot env backends: each round-trips a BootState; tool failures become one-line BootEnvErrors.

The U-Boot and GRUB backends run against small fake tools (POSIX sh scripts on PATH that emulate
``fw_printenv``/``fw_setenv`` and ``grub-editenv`` on a plain file) everywhere, and against the
real tools (Debian's ``u-boot-tools``/``libubootenv-tool`` and ``grub-common``) where installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overdrive.client.bootchooser import (
    DEFAULT_TRIAL_TRIES,
    BootState,
    SlotState,
    cap_tries,
    choose_boot,
    mark_bad,
    mark_good,
    mark_trial,
    trial_slot,
)
from overdrive.client.bootenv import (
    BOOTED_VAR,
    GRUB_MAX_TRIES,
    BootEnv,
    BootEnvError,
    FileBootEnv,
    GrubEnv,
    UBootEnv,
    open_boot_env,
)
from overdrive.errors import OverdriveError
from tests.conftest import reproducible

# --- fake tools -----------------------------------------------------------------------------------

# The fakes are POSIX sh + awk: they start in a few milliseconds, where a Python one takes ~30.

# One script for both fw_printenv and fw_setenv, like libubootenv (it looks at its own name). The
# environment is "name=value" lines in the file named first in the fw_env.config given with -c.
# fw_setenv reads libubootenv's "key=value" script lines and skips others without a word;
# FAKE_FW_SYNTAX=space makes it read "key value" lines and refuse "=" in a name, like U-Boot's own
# tools/env. An empty value deletes. FAKE_TOOL_LOG names a file that gets one line per call.
FAKE_FW_ENV = r"""
prog=${0##*/}
[ -z "$FAKE_TOOL_LOG" ] || echo "$prog $*" >> "$FAKE_TOOL_LOG"
config=/etc/fw_env.config script=
while [ $# -gt 0 ]; do
    case $1 in
        -c|--config) config=$2; shift 2 ;;
        -s|--script) script=$2; shift 2 ;;
        *) shift ;;
    esac
done
env=
[ -r "$config" ] && read -r env _ < "$config"
[ -n "$env" ] || { echo "Configuration file wrong or corrupted" >&2; exit 247; }
[ -f "$env" ] || { echo "Cannot read environment, using default" >&2; exit 1; }
[ "$prog" = fw_printenv ] && exec cat "$env"
awk -v syntax="$FAKE_FW_SYNTAX" '
    FILENAME == ARGV[1] {
        i = index($0, "="); set(substr($0, 1, i - 1), substr($0, i + 1)); next
    }
    /^#/ || $0 == "" { next }
    syntax == "space" {
        i = index($0, " ")
        name = i ? substr($0, 1, i - 1) : $0; value = i ? substr($0, i + 1) : ""
        if (index(name, "=")) {
            print "## Error: illegal character \047=\047 in variable name \"" name "\"" | "cat 1>&2"
            bad = 1; exit 1
        }
        set(name, value); next
    }
    index($0, "=") { i = index($0, "="); set(substr($0, 1, i - 1), substr($0, i + 1)) }
    function set(name, value) { if (!(name in val)) order[++n] = name; val[name] = value }
    END {
        if (bad) exit 1
        for (k = 1; k <= n; k++) if (val[order[k]] != "") print order[k] "=" val[order[k]]
    }
' "$env" "$script" > "$env.tmp" && mv "$env.tmp" "$env" || { rm -f "$env.tmp"; exit 1; }
"""

# grub-editenv FILE create|list|set NAME=VALUE...: the block is a header line, then name=value
# lines; like the real tool it creates a missing FILE, even for "list".
FAKE_GRUB_EDITENV = r"""
[ -z "$FAKE_TOOL_LOG" ] || echo "grub-editenv $*" >> "$FAKE_TOOL_LOG"
file=$1 cmd=$2
shift 2
header="# fake GRUB Environment Block"
if [ ! -e "$file" ] || [ "$cmd" = create ]; then
    echo "$header" > "$file.new" && mv "$file.new" "$file"
fi
if [ "$(head -n 1 "$file")" != "$header" ]; then
    echo "grub-editenv: error: invalid environment block." >&2; exit 1
fi
case $cmd in
    create) ;;
    list) tail -n +2 "$file" ;;
    set)
        for kv; do
            case $kv in
                *=*) ;;
                *) echo "grub-editenv: error: invalid parameter $kv." >&2; exit 1 ;;
            esac
        done
        { cat "$file"; printf '%s\n' "$@"; } | awk '
            { i = index($0, "="); name = i ? substr($0, 1, i - 1) : $0 }
            !(name in val) { order[++n] = name }
            { val[name] = $0 }
            END { for (k = 1; k <= n; k++) print val[order[k]] }
        ' > "$file.new" && mv "$file.new" "$file" ;;
    *) echo "grub-editenv: error: unknown command \`$cmd'." >&2; exit 1 ;;
esac
"""


def write_tool(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}")
    path.chmod(0o755)
    return path


def failing_tool(path: Path, message: str, code: int = 1) -> Path:
    return write_tool(path, f"printf '%s\\n' {shlex.quote(message)} >&2\nexit {code}\n")


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory first on PATH holding fake fw_printenv, fw_setenv and grub-editenv."""
    bin_dir = tmp_path / "bin"
    write_tool(bin_dir / "fw_printenv", FAKE_FW_ENV)
    write_tool(bin_dir / "fw_setenv", FAKE_FW_ENV)
    write_tool(bin_dir / "grub-editenv", FAKE_GRUB_EDITENV)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_TOOL_LOG", str(tmp_path / "tool.log"))
    return bin_dir


def tool_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "tool.log"
    return log.read_text().splitlines() if log.exists() else []


def fake_uboot(tmp_path: Path, env: dict[str, str] | None = None, **options: object) -> UBootEnv:
    env_file = tmp_path / "uboot.txt"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in (env or {}).items()))
    config = tmp_path / "fw_env.config"
    config.write_text(f"{env_file} 0x0000 0x4000\n")
    return UBootEnv(config, **options)  # type: ignore[arg-type]


# --- real tools -----------------------------------------------------------------------------------

REAL_FW = shutil.which("fw_printenv") is not None and shutil.which("fw_setenv") is not None
REAL_GRUB = shutil.which("grub-editenv") is not None
needs_real_fw = pytest.mark.skipif(
    not REAL_FW, reason="fw_printenv/fw_setenv not installed (apt-get install u-boot-tools)"
)
needs_real_grub = pytest.mark.skipif(
    not REAL_GRUB, reason="grub-editenv not installed (apt-get install grub-common)"
)
UBOOT_ENV_SIZE = 0x4000


def real_script_syntax() -> str:
    """libubootenv (Debian, Yocto) reads "key=value" scripts, U-Boot's own tools "key value"."""
    version = subprocess.run(
        ["fw_printenv", "-V"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return "key=value" if re.fullmatch(r"0\.\d+(\.\d+)?", version) else "key value"


def blank_uboot_env(path: Path, size: int = UBOOT_ENV_SIZE) -> Path:
    """An empty but valid U-Boot environment image: CRC32 (little-endian) of the data, then the
    data (NUL-terminated "k=v" strings ending in an empty one). Without a valid CRC the tools
    ignore the file and fall back to a default environment (/etc/u-boot-initial-env)."""
    data = b"\0" * (size - 4)
    path.write_bytes(struct.pack("<I", zlib.crc32(data)) + data)
    return path


def real_uboot(tmp_path: Path, **options: object) -> UBootEnv:
    env_file = blank_uboot_env(tmp_path / "uboot.env")
    config = tmp_path / "fw_env.config"
    config.write_text(f"{env_file} 0x0000 {UBOOT_ENV_SIZE:#x}\n")
    options.setdefault("script_syntax", real_script_syntax())
    return UBootEnv(config, **options)  # type: ignore[arg-type]


# --- every backend round-trips --------------------------------------------------------------------


@dataclass
class Backend:
    env: BootEnv
    max_tries: int | None = None  # GRUB's script counts down from GRUB_MAX_TRIES at most

    def expected(self, state: BootState) -> BootState:
        return state if self.max_tries is None else cap_tries(state, self.max_tries)


@pytest.fixture(params=["file", "uboot-fake", "grub-fake", "uboot-real", "grub-real"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    if kind == "file":
        yield Backend(FileBootEnv(tmp_path / "boot.json"))
    elif kind == "uboot-fake":
        request.getfixturevalue("fake_bin")
        yield Backend(fake_uboot(tmp_path))
    elif kind == "grub-fake":
        request.getfixturevalue("fake_bin")
        yield Backend(GrubEnv(tmp_path / "grubenv"), max_tries=GRUB_MAX_TRIES)
    elif kind == "uboot-real":
        if not REAL_FW:
            pytest.skip("fw_printenv/fw_setenv not installed (apt-get install u-boot-tools)")
        yield Backend(real_uboot(tmp_path))
    else:
        if not REAL_GRUB:
            pytest.skip("grub-editenv not installed (apt-get install grub-common)")
        subprocess.run(["grub-editenv", str(tmp_path / "grubenv"), "create"], check=True)
        yield Backend(GrubEnv(tmp_path / "grubenv"), max_tries=GRUB_MAX_TRIES)


def boots(state: BootState, n: int) -> BootState:
    for _ in range(n):
        state = choose_boot(state)[1]
    return state


def lifecycle_states() -> list[BootState]:
    """The states an update goes through, plus a few odd ones."""
    s0 = BootState.initial()
    s1 = choose_boot(s0)[1]  # only the record changes: booted=A
    s2 = mark_bad(s1, "B")
    s3 = mark_trial(s2, "B")
    s4 = choose_boot(s3)[1]  # a try spent, booted=B
    s5 = mark_good(s4, "B")
    s6 = mark_trial(mark_bad(s5, "A"), "A", tries=2)
    s7 = boots(s6, 3)  # A's tries spent, fell back to B
    s8 = mark_bad(s7, "A")
    odd = [
        BootState.initial(good=None),  # the record cleared again: BOOTED_SLOT unset
        BootState((SlotState("B", 17, True), SlotState("A", 10, True)), "A"),  # hex 0x11, 0xa
        BootState((SlotState("A", 0, True), SlotState("B", 0, True)), "B"),
        mark_trial(BootState.initial(booted="A"), "B", tries=GRUB_MAX_TRIES + 1),  # GRUB caps
    ]
    return [s0, s1, s2, s3, s4, s5, s6, s7, s8, *odd]


def test_backends_round_trip_the_update_lifecycle(backend: Backend) -> None:
    for state in lifecycle_states():
        backend.env.save(state)
        assert backend.env.load() == backend.expected(state), state.describe()


def test_backends_drive_a_whole_update(backend: Backend) -> None:
    """The updater and the (simulated) bootloader sharing one env, through a failed update and
    a successful one."""
    env = backend.env
    env.save(BootState.initial())

    def boot() -> str:
        booted, state = choose_boot(env.load())
        env.save(state)
        assert env.load().booted == booted
        return booted

    def install(slot: str) -> None:
        env.save(mark_trial(mark_bad(env.load(), slot), slot))

    assert boot() == "A"
    install("B")
    # crashed before the health check on every try: B's tries are gone, A boots
    assert [boot() for _ in range(DEFAULT_TRIAL_TRIES + 1)] == ["B"] * DEFAULT_TRIAL_TRIES + ["A"]
    assert trial_slot(env.load()) == "B"
    env.save(mark_bad(env.load(), "B"))
    assert trial_slot(env.load()) is None

    install("B")
    assert boot() == "B"  # the ignition goes off before init: one try spent
    assert boot() == "B"
    env.save(mark_good(env.load(), "B"))
    assert [boot() for _ in range(5)] == ["B"] * 5  # power cycles never roll B back
    state = env.load()
    assert trial_slot(state) is None
    assert state.good_slots() == ("B", "A")
    assert state == BootState((SlotState("B", 0, True), SlotState("A", 0, True)), "B")


def test_save_refuses_other_slots(backend: Backend) -> None:
    state = BootState.initial(("A", "B", "C"))
    if isinstance(backend.env, FileBootEnv):
        backend.env.save(state)
        assert backend.env.load() == state
        return
    with pytest.raises(BootEnvError, match="configured for slots A B, the state has A B C"):
        backend.env.save(state)


# --- file -----------------------------------------------------------------------------------------


@reproducible(25)
@given(
    st.lists(
        st.tuples(st.sampled_from("ABCDEF"), st.integers(0, 1000), st.booleans()),
        min_size=1,
        unique_by=lambda t: t[0],
    ),
    st.data(),
)
def test_file_round_trips_any_state(
    tmp_path: Path, slots: list[tuple[str, int, bool]], data: st.DataObject
) -> None:
    booted = data.draw(st.sampled_from([None, *(s[0] for s in slots)]))
    state = BootState(tuple(SlotState(*s) for s in slots), booted)
    env = FileBootEnv(tmp_path / "boot.json")
    env.save(state)
    assert env.load() == state


def test_file_init_creates_the_default_state_once(tmp_path: Path) -> None:
    env = FileBootEnv(tmp_path / "vehicle" / "boot.json")
    assert env.init() == BootState.initial()
    assert env.load() == BootState.initial()
    with pytest.raises(BootEnvError, match="already exists"):
        env.init()
    other = BootState.initial(good="B")
    assert env.init(other, overwrite=True) == other
    assert env.load() == other


def test_file_is_readable_json_written_atomically(tmp_path: Path) -> None:
    env = FileBootEnv(tmp_path / "boot.json")
    env.init()
    doc = json.loads((tmp_path / "boot.json").read_text())
    assert doc == {
        "format": "overdrive-boot-env",
        "version": 2,
        "slots": [
            {"name": "A", "tries_left": 0, "good": True},
            {"name": "B", "tries_left": 0, "good": False},
        ],
        "booted": None,
    }
    inode = (tmp_path / "boot.json").stat().st_ino
    env.save(choose_boot(mark_trial(env.load(), "B"))[1])
    doc = json.loads((tmp_path / "boot.json").read_text())
    assert doc["booted"] == "B"
    assert doc["slots"][0] == {"name": "B", "tries_left": DEFAULT_TRIAL_TRIES - 1, "good": False}
    assert (tmp_path / "boot.json").stat().st_ino != inode  # replaced, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boot.json"]  # no temp files left
    assert (tmp_path / "boot.json").stat().st_mode & 0o777 == 0o644


def test_file_version_1_still_loads(tmp_path: Path) -> None:
    """Version 1 files (before "booted") load with no record of the booted slot."""
    (tmp_path / "boot.json").write_text(
        json.dumps(
            {
                "format": "overdrive-boot-env",
                "version": 1,
                "slots": [
                    {"name": "A", "tries_left": 3, "good": True},
                    {"name": "B", "tries_left": 0, "good": False},
                ],
            }
        )
    )
    env = FileBootEnv(tmp_path / "boot.json")
    state = env.load()
    assert state == BootState((SlotState("A", 3, True), SlotState("B")))
    assert state.booted is None
    assert choose_boot(state) == ("A", replace(state, booted="A"))  # a good slot is not counted
    env.save(choose_boot(state)[1])
    assert json.loads((tmp_path / "boot.json").read_text())["version"] == 2


def test_file_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BootEnvError, match=r"no boot env at .*boot\.json: initialise it first"):
        FileBootEnv(tmp_path / "boot.json").load()
    assert not (tmp_path / "boot.json").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "JSONDecodeError"),
        (b"[]", "not an overdrive-boot-env document"),
        (b'{"format": "overdrive-boot-env", "version": 9, "slots": []}', "unsupported version 9"),
        (b'{"format": "overdrive-boot-env", "version": 2}', "KeyError"),
        (b'{"format": "overdrive-boot-env", "version": 1, "slots": []}', "at least one slot"),
        (b'{"format": "overdrive-boot-env", "version": 2, "slots": {}}', "'slots' must be a list"),
        (
            b'{"format": "overdrive-boot-env", "version": 2, "slots": '
            b'[{"name": "A", "tries_left": -2, "good": true}]}',
            "tries left must be an integer >= 0",
        ),
        (
            b'{"format": "overdrive-boot-env", "version": 2, "booted": 1, "slots": '
            b'[{"name": "A", "tries_left": 0, "good": true}]}',
            "'booted' must be a slot name or null",
        ),
        (
            b'{"format": "overdrive-boot-env", "version": 2, "booted": "B", "slots": '
            b'[{"name": "A", "tries_left": 0, "good": true}]}',
            "booted slot 'B' is not one of A",
        ),
    ],
)
def test_file_corrupt_is_a_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "boot.json").write_bytes(content)
    with pytest.raises(BootEnvError, match=f"boot env .*boot.json is not valid: .*{message}") as e:
        FileBootEnv(tmp_path / "boot.json").load()
    assert "\n" not in str(e.value)


def test_file_unwritable_is_a_boot_env_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a directory should be")
    with pytest.raises(BootEnvError, match=r"cannot write .*blocker/boot.json"):
        FileBootEnv(tmp_path / "blocker" / "boot.json").save(BootState.initial())


# --- U-Boot ---------------------------------------------------------------------------------------


def test_uboot_variables_follow_rauc(fake_bin: Path, tmp_path: Path) -> None:
    env = fake_uboot(tmp_path, {"bootcmd": "run distro_bootcmd"})
    state = mark_trial(BootState.initial(), "B", tries=12)
    env.save(state)
    assert env.read_vars() == {
        "bootcmd": "run distro_bootcmd",  # other variables are left alone
        "BOOT_ORDER": "B A",
        "BOOT_B_LEFT": "c",  # hex, as RAUC and U-Boot's setexpr write it
        "BOOT_B_GOOD": "0",
        "BOOT_A_LEFT": "0",  # a committed slot has no tries: it is never counted
        "BOOT_A_GOOD": "1",
        # no BOOTED_SLOT: nothing booted yet, and an empty value is not written
    }
    calls = [c for c in tool_calls(tmp_path) if c.startswith("fw_setenv")]
    assert len(calls) == 1  # one script, one environment write
    assert calls[0].startswith(f"fw_setenv -c {tmp_path / 'fw_env.config'} --script ")
    # the boot script's record of the slot it started
    env.save(choose_boot(state)[1])
    assert env.read_vars()[BOOTED_VAR] == "B"
    assert env.read_vars()["BOOT_B_LEFT"] == "b"
    assert env.load() == choose_boot(state)[1]


def test_uboot_unchanged_state_is_not_written(fake_bin: Path, tmp_path: Path) -> None:
    env = fake_uboot(tmp_path)
    state = BootState.initial()
    env.save(state)
    env.save(state)
    env.save(mark_good(state, "A"))  # the same state again
    assert sum(c.startswith("fw_setenv") for c in tool_calls(tmp_path)) == 1


def test_uboot_writes_only_changed_variables(fake_bin: Path, tmp_path: Path) -> None:
    env = fake_uboot(tmp_path)
    state = BootState.initial()
    env.save(state)
    (tmp_path / "tool.log").unlink()
    original = subprocess.run  # capture the script's content as fw_setenv sees it
    scripts: list[str] = []

    def spy(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        if "--script" in argv:
            scripts.append(Path(argv[argv.index("--script") + 1]).read_text())
        return original(argv, **kw)  # type: ignore[call-overload,no-any-return]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "run", spy)
        state = choose_boot(state)[1]
        env.save(state)  # a good slot boots: nothing spent, only the record
        state = mark_trial(state, "B")
        env.save(state)  # the trial: B first, with tries (B_GOOD was already 0)
        state = choose_boot(state)[1]
        env.save(state)  # the trial boots: one try spent and the record
        state = choose_boot(state)[1]
        env.save(state)  # the trial boots again: the record is unchanged
        env.save(replace(state, booted=None))  # an empty value unsets the record
    assert scripts == [
        "BOOTED_SLOT=A\n",
        "BOOT_ORDER=B A\nBOOT_B_LEFT=3\n",
        "BOOT_B_LEFT=2\nBOOTED_SLOT=B\n",
        "BOOT_B_LEFT=1\n",
        "BOOTED_SLOT=\n",
    ]
    assert BOOTED_VAR not in env.read_vars()
    assert env.load().booted is None


def test_uboot_steady_committed_slot_costs_no_write(fake_bin: Path, tmp_path: Path) -> None:
    """The simulated bootloader saving after every boot of a committed slot writes once: the
    first boot records the slot, later ones change nothing (flash wear, power-cut exposure)."""
    env = fake_uboot(tmp_path)
    env.save(BootState.initial())
    for _ in range(5):
        env.save(choose_boot(env.load())[1])
    assert sum(c.startswith("fw_setenv") for c in tool_calls(tmp_path)) == 2
    assert env.load() == BootState.initial(booted="A")


def test_uboot_plain_rauc_environment_is_refused(fake_bin: Path, tmp_path: Path) -> None:
    """RAUC's script spends a try on every boot, ours only on a trial: an environment without
    Overdrive's BOOT_x_GOOD is not guessed at (provisioning writes the full state)."""
    env = fake_uboot(tmp_path, {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"})
    with pytest.raises(BootEnvError, match=r"has no BOOT_A_GOOD: .*provision"):
        env.load()


def test_uboot_slot_missing_from_the_order_reads_as_bad(fake_bin: Path, tmp_path: Path) -> None:
    """The boot script never starts a slot that is not in BOOT_ORDER (RAUC's mark-bad drops it),
    so the loader must not believe its flags either."""
    env = fake_uboot(
        tmp_path,
        {"BOOT_ORDER": "B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "2", **GOOD, "BOOT_A_GOOD": "1"},
    )
    assert env.load() == BootState((SlotState("B", 2, False), SlotState("A", 0, False)))


def test_uboot_empty_booted_slot_is_unset(fake_bin: Path, tmp_path: Path) -> None:
    base = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "0", "BOOT_B_LEFT": "0", **GOOD}
    assert fake_uboot(tmp_path, {**base, BOOTED_VAR: ""}).load().booted is None
    assert fake_uboot(tmp_path, base).load().booted is None
    assert fake_uboot(tmp_path, {**base, BOOTED_VAR: "B"}).load().booted == "B"


GOOD = {"BOOT_A_GOOD": "1", "BOOT_B_GOOD": "0"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "has no BOOT_ORDER: initialise the boot state first"),
        ({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_A_GOOD": "1"}, "has no BOOT_B_LEFT"),
        (
            {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"},
            "has no BOOT_A_GOOD: initialise the boot state first",
        ),
        (
            {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "three", "BOOT_B_LEFT": "0"},
            "BOOT_A_LEFT='three' is not a hex number",
        ),
        (
            {"BOOT_ORDER": "A B R", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"},
            "BOOT_ORDER='A B R' names slot 'R', not one of A B",
        ),
        (
            {"BOOT_ORDER": "A A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"},
            "lists slot A twice",
        ),
        (
            {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0", "BOOT_A_GOOD": "yes"},
            "BOOT_A_GOOD='yes' is not 0 or 1",
        ),
        (
            {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "0", "BOOT_B_LEFT": "0", **GOOD, BOOTED_VAR: "R"},
            "BOOTED_SLOT='R' is not one of A B",
        ),
        (
            {
                "BOOT_ORDER": "A B",
                "BOOT_A_LEFT": "0",
                "BOOT_B_LEFT": "0",
                **GOOD,
                BOOTED_VAR: "A B",
            },
            "BOOTED_SLOT='A B' is not one of A B",
        ),
    ],
)
def test_uboot_bad_environment_is_a_clear_error(
    fake_bin: Path, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(BootEnvError, match=re.escape(message)) as e:
        fake_uboot(tmp_path, env).load()
    assert "U-Boot env via fw_printenv/fw_setenv" in str(e.value)


def test_uboot_more_slots_are_configurable(fake_bin: Path, tmp_path: Path) -> None:
    env = fake_uboot(tmp_path, slots=("A", "B", "R"))
    state = BootState.initial(("A", "B", "R"), booted="R")
    env.save(state)
    assert env.load() == state
    assert env.read_vars()["BOOT_ORDER"] == "A B R"
    assert env.read_vars()[BOOTED_VAR] == "R"


def test_uboot_bootcount_follows_the_trial(fake_bin: Path, tmp_path: Path) -> None:
    env = fake_uboot(tmp_path, bootcount=True)
    env.save(BootState.initial())
    assert env.read_vars()["upgrade_available"] == "0"
    assert env.read_vars()["bootcount"] == "0"
    env.save(mark_trial(env.load(), "B"))
    assert env.read_vars()["upgrade_available"] == "1"
    # U-Boot counts the trial's boots; saving during the trial leaves its count alone
    with (tmp_path / "uboot.txt").open("a") as f:
        f.write("bootcount=1\n")
    env.save(choose_boot(env.load())[1])
    assert env.read_vars()["bootcount"] == "1"
    env.save(mark_good(env.load(), "B"))
    assert env.read_vars()["upgrade_available"] == "0"
    assert env.read_vars()["bootcount"] == "0"


def test_uboot_classic_script_syntax(
    fake_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FW_SYNTAX", "space")
    env = fake_uboot(tmp_path, script_syntax="key value")
    state = mark_trial(BootState.initial(), "B")
    env.save(state)
    assert env.load() == state
    assert env.read_vars()["BOOT_ORDER"] == "B A"
    booted = choose_boot(state)[1]
    env.save(booted)
    assert env.read_vars()[BOOTED_VAR] == "B"
    env.save(state)  # "BOOTED_SLOT " with no value unsets it in this syntax too
    assert BOOTED_VAR not in env.read_vars()
    # and libubootenv's syntax against U-Boot's tool: the tool says no, nothing is written
    with pytest.raises(BootEnvError, match=r"fw_setenv failed \(exit 1\): ## Error: illegal"):
        fake_uboot(tmp_path, script_syntax="key=value").save(state)


def test_uboot_ignored_script_lines_are_detected(fake_bin: Path, tmp_path: Path) -> None:
    """libubootenv skips lines it cannot parse and still exits 0: the read-back catches it."""
    env = fake_uboot(tmp_path, script_syntax="key value")
    with pytest.raises(
        BootEnvError,
        match=r"fw_setenv reported success but BOOT_ORDER is missing, not 'A B' "
        r"\(script_syntax is 'key value'",
    ):
        env.save(BootState.initial())


def test_uboot_bad_script_syntax_option() -> None:
    with pytest.raises(BootEnvError, match="bad script_syntax 'k:v'"):
        UBootEnv(script_syntax="k:v")  # type: ignore[arg-type]


def test_uboot_tool_failure_carries_its_message(tmp_path: Path) -> None:
    bad = failing_tool(tmp_path / "fw_printenv", "Cannot read environment, using default")
    env = UBootEnv(tmp_path / "cfg", fw_printenv=str(bad))
    with pytest.raises(BootEnvError) as e:
        env.load()
    assert str(e.value) == f"{bad} failed (exit 1): Cannot read environment, using default"
    assert isinstance(e.value, OverdriveError)


def test_uboot_setenv_failure_carries_its_message(fake_bin: Path, tmp_path: Path) -> None:
    bad = failing_tool(tmp_path / "other" / "fw_setenv", "Error: environment is read-only\n", 3)
    env = fake_uboot(tmp_path, fw_setenv=str(bad))
    with pytest.raises(BootEnvError, match=r"fw_setenv failed \(exit 3\): Error: environment is"):
        env.save(BootState.initial())


def test_uboot_missing_tool_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    with pytest.raises(BootEnvError, match=r"^fw_printenv: not found; install it"):
        UBootEnv().load()
    with pytest.raises(BootEnvError, match=r"^/opt/none/fw_printenv: not found"):
        UBootEnv(fw_printenv="/opt/none/fw_printenv").load()


def test_uboot_unrunnable_tool(tmp_path: Path) -> None:
    tool = tmp_path / "fw_printenv"
    tool.write_text("not executable")
    with pytest.raises(BootEnvError, match="fw_printenv: cannot run: Permission denied"):
        UBootEnv(fw_printenv=str(tool)).load()


@needs_real_fw
def test_real_uboot_tools_store_rauc_variables(tmp_path: Path) -> None:
    env = real_uboot(tmp_path, bootcount=True)
    state = mark_trial(BootState.initial(), "B", tries=12)
    env.save(state)
    assert env.load() == state
    assert env.read_vars() == {
        "BOOT_ORDER": "B A",
        "BOOT_A_LEFT": "0",
        "BOOT_A_GOOD": "1",
        "BOOT_B_LEFT": "c",
        "BOOT_B_GOOD": "0",
        "upgrade_available": "1",
        "bootcount": "0",
    }
    booted = choose_boot(state)[1]
    env.save(booted)
    assert env.read_vars()[BOOTED_VAR] == "B"
    assert env.load() == booted
    env.save(replace(booted, booted=None))  # "BOOTED_SLOT=" deletes the variable
    assert BOOTED_VAR not in env.read_vars()
    assert env.load() == replace(booted, booted=None)
    # it is a real U-Boot env image: CRC32 of the data area, then "name=value\0" strings
    raw = (tmp_path / "uboot.env").read_bytes()
    assert len(raw) == UBOOT_ENV_SIZE
    assert struct.unpack("<I", raw[:4])[0] == zlib.crc32(raw[4:])
    assert b"BOOT_ORDER=B A\0" in raw


@needs_real_fw
def test_real_uboot_tools_plain_rauc_environment_is_refused(tmp_path: Path) -> None:
    env = real_uboot(tmp_path)
    syntax = real_script_syntax()
    sep = "=" if syntax == "key=value" else " "
    rauc = {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"}
    script = tmp_path / "rauc-script"
    script.write_text("".join(f"{k}{sep}{v}\n" for k, v in rauc.items()))
    subprocess.run(
        ["fw_setenv", "-c", str(tmp_path / "fw_env.config"), "--script", str(script)], check=True
    )
    with pytest.raises(BootEnvError, match="has no BOOT_B_GOOD"):
        env.load()
    env.save(BootState.initial())  # what provisioning does: the full Overdrive state
    assert env.load() == BootState.initial()


@needs_real_fw
def test_real_uboot_tools_errors(tmp_path: Path) -> None:
    with pytest.raises(BootEnvError, match=r"^fw_printenv failed \(exit \d+\): .+"):
        UBootEnv(tmp_path / "no-such-fw_env.config").load()
    env = real_uboot(tmp_path)
    with pytest.raises(BootEnvError, match="has no BOOT_ORDER"):
        env.load()


@needs_real_fw
def test_real_uboot_wrong_script_syntax_is_detected(tmp_path: Path) -> None:
    real = real_script_syntax()
    wrong = "key value" if real == "key=value" else "key=value"
    env = real_uboot(tmp_path, script_syntax=wrong)
    with pytest.raises(BootEnvError, match=r"fw_setenv (reported success but|failed)"):
        env.save(BootState.initial())


# --- GRUB -----------------------------------------------------------------------------------------


def test_grub_variables(fake_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    env = GrubEnv(path)
    subprocess.run(["grub-editenv", str(path), "set", "saved_entry=1"], check=True)
    state = mark_trial(BootState.initial(), "B")
    env.save(state)
    assert env.read_vars() == {
        "saved_entry": "1",  # other variables are left alone
        "ORDER": "B A",
        "B_LEFT": "3",
        "B_GOOD": "0",
        "A_LEFT": "0",  # a committed slot has no tries: it is never counted
        "A_GOOD": "1",
        # no BOOTED_SLOT: nothing booted yet, and an empty value is not written
    }
    # GRUB's script boots B: B_LEFT=2 and the record, which read back as choose_boot's state
    subprocess.run(["grub-editenv", str(path), "set", "B_LEFT=2", "BOOTED_SLOT=B"], check=True)
    assert env.load() == choose_boot(state)[1]
    # a bad slot: last in the order, not good, no tries
    env.save(mark_bad(env.load(), "B"))
    assert env.read_vars()["ORDER"] == "A B"
    assert (env.read_vars()["B_LEFT"], env.read_vars()["B_GOOD"]) == ("0", "0")
    # RAUC's GRUB variables are not written
    assert not [k for k in env.read_vars() if k.endswith(("_OK", "_TRY"))]


def test_grub_caps_tries_at_what_its_script_can_count(fake_bin: Path, tmp_path: Path) -> None:
    assert GRUB_MAX_TRIES == 9
    env = GrubEnv(tmp_path / "grubenv")
    env.save(mark_trial(BootState.initial(), "B", tries=12))
    assert env.read_vars()["B_LEFT"] == "9"
    assert env.load().slot("B").tries_left == GRUB_MAX_TRIES


def test_grub_missing_good_is_an_error(fake_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    subprocess.run(
        ["grub-editenv", str(path), "set", "ORDER=B A", "A_LEFT=0", "A_GOOD=1", "B_LEFT=2"],
        check=True,
    )
    with pytest.raises(BootEnvError, match="has no B_GOOD: initialise the boot state first"):
        GrubEnv(path).load()


def test_grub_slot_missing_from_the_order_reads_as_bad(fake_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    subprocess.run(
        [
            "grub-editenv",
            str(path),
            "set",
            "ORDER=B",
            "A_LEFT=3",
            "A_GOOD=1",
            "B_LEFT=0",
            "B_GOOD=1",
        ],
        check=True,
    )
    assert GrubEnv(path).load() == BootState((SlotState("B", 0, True), SlotState("A", 0, False)))


def test_grub_empty_booted_slot_is_unset(fake_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    env = GrubEnv(path)
    env.save(BootState.initial(booted="A"))
    assert env.read_vars()[BOOTED_VAR] == "A"
    env.save(BootState.initial())
    assert env.read_vars()[BOOTED_VAR] == ""  # grub-editenv cannot unset in a "set"
    assert env.load() == BootState.initial()


def test_grub_plain_rauc_environment_is_refused(fake_bin: Path, tmp_path: Path) -> None:
    """RAUC's GRUB variables (x_OK/x_TRY) mean a script that counts every boot: refuse to
    guess, the boot state must be initialised for Overdrive's script."""
    path = tmp_path / "grubenv"
    subprocess.run(
        ["grub-editenv", str(path), "set", "ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=1", "B_TRY=1"],
        check=True,
    )
    with pytest.raises(BootEnvError, match="has no A_LEFT: initialise the boot state first"):
        GrubEnv(path).load()


def test_grub_missing_file_is_an_error_and_not_created(fake_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    with pytest.raises(BootEnvError, match=r"no GRUB env at .*grubenv: create it with 'grub-edi"):
        GrubEnv(path).load()
    assert not path.exists()
    GrubEnv(path).save(BootState.initial())  # an explicit save creates it
    assert GrubEnv(path).load() == BootState.initial()


def test_grub_save_replaces_the_file_atomically(fake_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    GrubEnv(path).save(BootState.initial())
    path.chmod(0o640)
    inode = path.stat().st_ino
    GrubEnv(path).save(mark_trial(BootState.initial(), "B"))
    assert path.stat().st_ino != inode
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "grubenv", "tool.log"]
    # the real file is only listed; every edit happens on a scratch copy
    assert not [c for c in tool_calls(tmp_path) if c.startswith(f"grub-editenv {path} set")]


def test_grub_unchanged_state_is_not_written(fake_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    GrubEnv(path).save(BootState.initial())
    inode = path.stat().st_ino
    GrubEnv(path).save(BootState.initial())
    assert path.stat().st_ino == inode
    # a steady committed slot: the first boot writes the record, later boots nothing
    GrubEnv(path).save(choose_boot(GrubEnv(path).load())[1])
    assert path.stat().st_ino != inode
    inode = path.stat().st_ino
    for _ in range(5):
        GrubEnv(path).save(choose_boot(GrubEnv(path).load())[1])
    assert path.stat().st_ino == inode
    assert GrubEnv(path).load() == BootState.initial(booted="A")


def test_grub_symlinked_env_stays_a_symlink(fake_bin: Path, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "grubenv").symlink_to(tmp_path / "real" / "grubenv")
    GrubEnv(tmp_path / "grubenv").save(BootState.initial())
    assert (tmp_path / "grubenv").is_symlink()
    assert GrubEnv(tmp_path / "real" / "grubenv").load() == BootState.initial()


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (["A_LEFT=1"], "has no ORDER"),
        (["ORDER=A X"], "ORDER='A X' names slot 'X', not one of A B"),
        (["ORDER=A B A"], "ORDER='A B A' lists slot A twice"),
        (["ORDER=A B", "A_LEFT=0", "A_GOOD=1"], "has no B_LEFT: initialise the boot state first"),
        (["ORDER=B", "B_LEFT=0", "B_GOOD=1"], "has no A_LEFT"),  # one left out of ORDER too
        (["ORDER=A B", "A_LEFT=0", "B_LEFT=0"], "has no A_GOOD: initialise the boot state first"),
        (["ORDER=A B", "A_LEFT=three", "B_LEFT=0"], "A_LEFT='three' is not a number 0-9"),
        (["ORDER=A B", "A_LEFT=10", "B_LEFT=0"], "A_LEFT='10' is not a number 0-9"),
        (["ORDER=A B", "A_LEFT=-1", "B_LEFT=0"], "A_LEFT='-1' is not a number 0-9"),
        (["ORDER=A B", "A_LEFT=", "B_LEFT=0"], "A_LEFT='' is not a number 0-9"),
        (["ORDER=A B", "A_LEFT=0", "B_LEFT=0", "A_GOOD=true"], "A_GOOD='true' is not 0 or 1"),
        (["ORDER=A B", "A_LEFT=0", "B_LEFT=0", "A_GOOD=1", "B_GOOD="], "B_GOOD='' is not 0 or 1"),
        (
            ["ORDER=A B", "A_LEFT=0", "B_LEFT=0", "A_GOOD=1", "B_GOOD=0", "BOOTED_SLOT=C"],
            "BOOTED_SLOT='C' is not one",
        ),
    ],
)
def test_grub_bad_environment_is_a_clear_error(
    fake_bin: Path, tmp_path: Path, variables: list[str], message: str
) -> None:
    path = tmp_path / "grubenv"
    subprocess.run(["grub-editenv", str(path), "set", *variables], check=True)
    with pytest.raises(BootEnvError, match=re.escape(message)):
        GrubEnv(path).load()


def test_grub_tool_failure_carries_its_message(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    path.write_text("whatever")
    bad = failing_tool(tmp_path / "grub-editenv", "grub-editenv: error: invalid environment block.")
    with pytest.raises(BootEnvError) as e:
        GrubEnv(path, grub_editenv=str(bad)).load()
    assert str(e.value) == f"{bad} failed (exit 1): grub-editenv: error: invalid environment block."
    with pytest.raises(BootEnvError, match="grub-editenv failed"):
        GrubEnv(path, grub_editenv=str(bad)).save(BootState.initial())
    assert path.read_text() == "whatever"


def test_grub_missing_tool_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    (tmp_path / "grubenv").write_text("")
    with pytest.raises(BootEnvError, match=r"^grub-editenv: not found; install it"):
        GrubEnv(tmp_path / "grubenv").load()


@needs_real_grub
def test_real_grub_editenv_stores_the_variables(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    subprocess.run(["grub-editenv", str(path), "create"], check=True)
    env = GrubEnv(path)
    state = mark_trial(BootState.initial(), "B")
    env.save(state)
    assert env.load() == state
    raw = path.read_bytes()
    assert len(raw) == 1024  # still a GRUB environment block GRUB's save_env can write in place
    assert raw.startswith(b"# GRUB Environment Block\n")
    assert b"ORDER=B A\n" in raw
    assert b"B_LEFT=3\n" in raw


@needs_real_grub
def test_real_grub_editenv_round_trips_capped_tries_and_booted_slot(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    subprocess.run(["grub-editenv", str(path), "create"], check=True)
    env = GrubEnv(path)
    state = mark_trial(BootState.initial(booted="A"), "B", tries=GRUB_MAX_TRIES + 3)
    env.save(state)
    assert env.read_vars() == {
        "ORDER": "B A",
        "B_LEFT": "9",  # capped: GRUB's script counts down from 9
        "B_GOOD": "0",
        "A_LEFT": "0",
        "A_GOOD": "1",
        BOOTED_VAR: "A",
    }
    assert env.load() == cap_tries(state, GRUB_MAX_TRIES)
    # the simulated bootloader on the real block: 9 trial boots, then the good slot for good
    started = []
    for _ in range(GRUB_MAX_TRIES + 2):
        booted, after = choose_boot(env.load())
        env.save(after)
        assert env.load() == after
        started.append(booted)
    assert started == ["B"] * GRUB_MAX_TRIES + ["A"] * 2
    assert env.read_vars()["B_LEFT"] == "0"
    assert env.read_vars()[BOOTED_VAR] == "A"
    # tries up to the cap are stored as they are
    for tries in (1, GRUB_MAX_TRIES - 1, GRUB_MAX_TRIES):
        tried = mark_trial(env.load(), "B", tries=tries)
        env.save(tried)
        assert env.load() == tried
    # the record cleared: grub-editenv stores an empty value, which reads back as no record
    env.save(replace(env.load(), booted=None))
    assert env.read_vars()[BOOTED_VAR] == ""
    assert env.load().booted is None
    assert len(path.read_bytes()) == 1024


@needs_real_grub
def test_real_grub_editenv_errors(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    path.write_text("not an environment block\n")
    with pytest.raises(BootEnvError, match=r"^grub-editenv failed \(exit 1\): .*invalid env"):
        GrubEnv(path).load()


# --- open_boot_env --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "options", "cls"),
    [
        ("file", {"path": "/tmp/x.json"}, FileBootEnv),
        ("uboot", {}, UBootEnv),
        ("uboot", {"config": "/etc/fw_env.config", "fw_setenv": "/sbin/fw_setenv"}, UBootEnv),
        ("grub", {"env_file": "/boot/grub/grubenv"}, GrubEnv),
    ],
)
def test_open_boot_env(kind: str, options: dict[str, object], cls: type[BootEnv]) -> None:
    env = open_boot_env(kind, **options)
    assert type(env) is cls
    assert env.kind == kind
    assert env.describe() in repr(env)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: open_boot_env("barebox"), "unknown boot env kind 'barebox': choose one of file"),
        (lambda: open_boot_env("file"), "bad options for the file boot env: .*path"),
        (lambda: open_boot_env("grub", env_file="x", colour=1), "bad options for the grub"),
        (lambda: open_boot_env("uboot", slots=("A", "A")), "bad slots option: slot A appears"),
    ],
)
def test_open_boot_env_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(BootEnvError, match=message):
        call()


def test_describe_says_where(tmp_path: Path) -> None:
    assert FileBootEnv(tmp_path / "b.json").describe() == f"file {tmp_path / 'b.json'}"
    assert (
        UBootEnv().describe() == "U-Boot env via fw_printenv/fw_setenv (the default fw_env.config)"
    )
    assert (
        GrubEnv("/boot/grub/grubenv").describe() == "GRUB env /boot/grub/grubenv via grub-editenv"
    )
