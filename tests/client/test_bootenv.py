"""Boot env backends: each round-trips a BootState; tool failures become one-line BootEnvErrors.

The U-Boot and GRUB backends run against small fake tools (Python scripts on PATH that emulate
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
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.bootchooser import (
    BootState,
    SlotState,
    cap_tries,
    choose_boot,
    mark_bad,
    mark_good,
    mark_try_once,
    trial_slot,
)
from client.bootenv import (
    BootEnv,
    BootEnvError,
    FileBootEnv,
    GrubEnv,
    UBootEnv,
    open_boot_env,
)
from overdrive.errors import OverdriveError

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
    max_tries: int | None = None  # GRUB stores one try at most

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
        yield Backend(GrubEnv(tmp_path / "grubenv"), max_tries=1)
    elif kind == "uboot-real":
        if not REAL_FW:
            pytest.skip("fw_printenv/fw_setenv not installed (apt-get install u-boot-tools)")
        yield Backend(real_uboot(tmp_path))
    else:
        if not REAL_GRUB:
            pytest.skip("grub-editenv not installed (apt-get install grub-common)")
        subprocess.run(["grub-editenv", str(tmp_path / "grubenv"), "create"], check=True)
        yield Backend(GrubEnv(tmp_path / "grubenv"), max_tries=1)


def lifecycle_states() -> list[BootState]:
    """The states an update goes through, plus a few odd ones."""
    s0 = BootState.initial()
    s1 = mark_bad(s0, "B")
    s2 = mark_try_once(s1, "B")
    s3 = choose_boot(s2)[1]
    s4 = mark_good(s3, "B")
    s5 = mark_try_once(mark_bad(s4, "A"), "A")
    s6 = choose_boot(choose_boot(s5)[1])[1]  # A's try spent, fell back to B
    s7 = mark_bad(s6, "A")
    odd = [
        BootState.initial(good=None),
        BootState((SlotState("B", 17, True), SlotState("A", 10, True))),  # hex 0x11, 0xa
        BootState((SlotState("A", 0, True), SlotState("B", 0, True))),
    ]
    return [s0, s1, s2, s3, s4, s5, s6, s7, *odd]


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
        return booted

    def install(slot: str) -> None:
        env.save(mark_try_once(mark_bad(env.load(), slot), slot))

    install("B")
    assert boot() == "B"
    assert boot() == "A"  # crashed before the health check: B's one try is gone
    assert trial_slot(env.load()) == "B"
    env.save(mark_bad(env.load(), "B"))
    assert trial_slot(env.load()) is None

    install("B")
    assert boot() == "B"
    env.save(mark_good(env.load(), "B"))
    assert boot() == "B"
    state = env.load()
    assert trial_slot(state) is None
    assert state.good_slots() == ("B", "A")


def test_save_refuses_other_slots(backend: Backend) -> None:
    state = BootState.initial(("A", "B", "C"))
    if isinstance(backend.env, FileBootEnv):
        backend.env.save(state)
        assert backend.env.load() == state
        return
    with pytest.raises(BootEnvError, match="configured for slots A B, the state has A B C"):
        backend.env.save(state)


# --- file -----------------------------------------------------------------------------------------


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from("ABCDEF"), st.integers(0, 1000), st.booleans()),
        min_size=1,
        unique_by=lambda t: t[0],
    )
)
def test_file_round_trips_any_state(tmp_path: Path, slots: list[tuple[str, int, bool]]) -> None:
    state = BootState(tuple(SlotState(*s) for s in slots))
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
        "version": 1,
        "slots": [
            {"name": "A", "tries_left": 3, "good": True},
            {"name": "B", "tries_left": 0, "good": False},
        ],
    }
    inode = (tmp_path / "boot.json").stat().st_ino
    env.save(mark_try_once(env.load(), "B"))
    assert (tmp_path / "boot.json").stat().st_ino != inode  # replaced, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boot.json"]  # no temp files left
    assert (tmp_path / "boot.json").stat().st_mode & 0o777 == 0o644


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
        (b'{"format": "overdrive-boot-env", "version": 1}', "KeyError"),
        (b'{"format": "overdrive-boot-env", "version": 1, "slots": []}', "at least one slot"),
        (
            b'{"format": "overdrive-boot-env", "version": 1, "slots": '
            b'[{"name": "A", "tries_left": -2, "good": true}]}',
            "tries left must be an integer >= 0",
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
    env.save(mark_try_once(BootState.initial(tries=12), "B"))
    assert env.read_vars() == {
        "bootcmd": "run distro_bootcmd",  # other variables are left alone
        "BOOT_ORDER": "B A",
        "BOOT_A_LEFT": "c",  # hex, as RAUC and U-Boot's setexpr write it
        "BOOT_A_GOOD": "1",
        "BOOT_B_LEFT": "1",
        "BOOT_B_GOOD": "0",
    }
    calls = [c for c in tool_calls(tmp_path) if c.startswith("fw_setenv")]
    assert len(calls) == 1  # one script, one environment write
    assert calls[0].startswith(f"fw_setenv -c {tmp_path / 'fw_env.config'} --script ")


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
        env.save(choose_boot(state)[1])
    assert scripts == ["BOOT_A_LEFT=2\n"]


def test_uboot_reads_a_plain_rauc_environment(fake_bin: Path, tmp_path: Path) -> None:
    """Without Overdrive's BOOT_x_GOOD, a slot in BOOT_ORDER with tries left is good (RAUC's
    reading); a slot RAUC dropped from BOOT_ORDER (its mark-bad) goes last."""
    env = fake_uboot(tmp_path, {"BOOT_ORDER": "B", "BOOT_A_LEFT": "0x3", "BOOT_B_LEFT": "2"})
    assert env.load() == BootState((SlotState("B", 2, True), SlotState("A", 3, False)))
    env = fake_uboot(tmp_path, {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"})
    assert env.load() == BootState((SlotState("A", 3, True), SlotState("B", 0, False)))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "has no BOOT_ORDER: initialise the boot state first"),
        ({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3"}, "has no BOOT_B_LEFT"),
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
    state = BootState.initial(("A", "B", "R"))
    env.save(state)
    assert env.load() == state
    assert env.read_vars()["BOOT_ORDER"] == "A B R"


def test_uboot_bootcount_follows_the_trial(fake_bin: Path, tmp_path: Path) -> None:
    env = fake_uboot(tmp_path, bootcount=True)
    env.save(BootState.initial())
    assert env.read_vars()["upgrade_available"] == "0"
    assert env.read_vars()["bootcount"] == "0"
    env.save(mark_try_once(env.load(), "B"))
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
    state = mark_try_once(BootState.initial(), "B")
    env.save(state)
    assert env.load() == state
    assert env.read_vars()["BOOT_ORDER"] == "B A"
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
    state = mark_try_once(BootState.initial(), "B")
    env.save(state)
    assert env.load() == state
    assert env.read_vars() == {
        "BOOT_ORDER": "B A",
        "BOOT_A_LEFT": "3",
        "BOOT_A_GOOD": "1",
        "BOOT_B_LEFT": "1",
        "BOOT_B_GOOD": "0",
        "upgrade_available": "1",
        "bootcount": "0",
    }
    # it is a real U-Boot env image: CRC32 of the data area, then "name=value\0" strings
    raw = (tmp_path / "uboot.env").read_bytes()
    assert len(raw) == UBOOT_ENV_SIZE
    assert struct.unpack("<I", raw[:4])[0] == zlib.crc32(raw[4:])
    assert b"BOOT_ORDER=B A\0" in raw


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


def test_grub_variables_follow_rauc(fake_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    env = GrubEnv(path)
    subprocess.run(["grub-editenv", str(path), "set", "saved_entry=1"], check=True)
    state = mark_try_once(BootState.initial(), "B")
    env.save(state)
    assert env.read_vars() == {
        "saved_entry": "1",  # other variables are left alone
        "ORDER": "B A",
        "B_OK": "1",
        "B_TRY": "0",
        "B_GOOD": "0",
        "A_OK": "1",
        "A_TRY": "0",  # A's 3 tries are stored as 1: GRUB cannot count
        "A_GOOD": "1",
    }
    # GRUB boots B and sets B_TRY=1 itself; that reads back as "B's try is spent"
    subprocess.run(["grub-editenv", str(path), "set", "B_TRY=1"], check=True)
    assert env.load() == cap_tries(choose_boot(state)[1], 1)
    # a bad slot is OK=0, as RAUC's mark-bad writes it
    env.save(mark_bad(env.load(), "B"))
    assert env.read_vars()["B_OK"] == "0"
    assert env.read_vars()["ORDER"] == "A B"


def test_grub_reads_a_plain_rauc_environment(fake_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    subprocess.run(
        ["grub-editenv", str(path), "set", "ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=1", "B_TRY=1"],
        check=True,
    )
    assert GrubEnv(path).load() == BootState((SlotState("A", 1, True), SlotState("B", 0, False)))


def test_grub_missing_file_is_an_error_and_not_created(fake_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    with pytest.raises(BootEnvError, match=r"no GRUB env at .*grubenv: create it with 'grub-edi"):
        GrubEnv(path).load()
    assert not path.exists()
    GrubEnv(path).save(BootState.initial())  # an explicit save creates it
    assert GrubEnv(path).load() == BootState.initial(tries=1)


def test_grub_save_replaces_the_file_atomically(fake_bin: Path, tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    GrubEnv(path).save(BootState.initial())
    path.chmod(0o640)
    inode = path.stat().st_ino
    GrubEnv(path).save(mark_try_once(BootState.initial(), "B"))
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


def test_grub_symlinked_env_stays_a_symlink(fake_bin: Path, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "grubenv").symlink_to(tmp_path / "real" / "grubenv")
    GrubEnv(tmp_path / "grubenv").save(BootState.initial())
    assert (tmp_path / "grubenv").is_symlink()
    assert GrubEnv(tmp_path / "real" / "grubenv").load() == BootState.initial(tries=1)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (["A_OK=1"], "has no ORDER"),
        (["ORDER=A B", "A_OK=true"], "A_OK='true' is not 0 or 1"),
        (["ORDER=A X"], "ORDER='A X' names slot 'X', not one of A B"),
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
def test_real_grub_editenv_stores_rauc_variables(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    subprocess.run(["grub-editenv", str(path), "create"], check=True)
    env = GrubEnv(path)
    state = mark_try_once(BootState.initial(), "B")
    env.save(state)
    assert env.load() == cap_tries(state, 1)
    raw = path.read_bytes()
    assert len(raw) == 1024  # still a GRUB environment block GRUB's save_env can write in place
    assert raw.startswith(b"# GRUB Environment Block\n")
    assert b"ORDER=B A\n" in raw


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
