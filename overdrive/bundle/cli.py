"""``overdrive bundle create|inspect|apply``: the bundle codec from the command line.

``apply`` runs exactly the code a vehicle runs (:func:`overdrive.bundle.apply_bundle`), so a
release engineer can rehearse an install on a workstation. Bad input surfaces as a
:class:`~overdrive.bundle.errors.BundleError` (one ``error:`` line from the root CLI) or a
``click.BadParameter``; never as a traceback.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from overdrive.bundle.decoder import apply_bundle
from overdrive.bundle.encoder import DEFAULT_LEVEL, encode_bundle
from overdrive.bundle.errors import BundleError
from overdrive.bundle.format import (
    FORMAT_VERSION,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    BundleHeader,
    Manifest,
    Op,
    read_header,
)
from overdrive.errors import UsageError

__all__ = ["InvalidSize", "bundle", "format_size", "parse_size"]


class InvalidSize(UsageError, ValueError):
    """A size argument that cannot be parsed.

    Also a ValueError (the conventional exception for a bad value) and an OverdriveError, so a
    caller that does not catch it still gets a one-line ``error:`` from the root CLI.
    """


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """Parse ``4MiB``, ``512KiB``, ``1M`` (binary), ``1MB`` (decimal) or plain bytes.

    Raises :class:`InvalidSize` (a ValueError) with a one-line reason for anything else or a
    fractional byte count.
    """
    m = _SIZE.fullmatch(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise InvalidSize(f"{text!r} is not a size (examples: 4MiB, 512KiB, 1M, 65536)")
    number = m.group(1)
    scale = _UNITS[unit]
    if "." in number:
        whole, frac = number.split(".")
        numerator = int(whole + frac) * scale
        denominator: int = 10 ** len(frac)
        if numerator % denominator:
            raise InvalidSize(f"{text!r} is not a whole number of bytes")
        return numerator // denominator
    return int(number) * scale


def format_size(n: int) -> str:
    """``1536`` -> ``1.5 KiB``; exact byte counts below 1 KiB."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _chunk_size(ctx: click.Context, param: click.Parameter, value: str | int) -> int:
    """Click callback: a chunk size within the format's limits, or click.BadParameter."""
    try:
        n = value if isinstance(value, int) else parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    if not MIN_CHUNK_SIZE <= n <= MAX_CHUNK_SIZE:
        raise click.BadParameter(
            f"{value} is outside [{format_size(MIN_CHUNK_SIZE)}, {format_size(MAX_CHUNK_SIZE)}]",
            ctx=ctx,
            param=param,
        )
    return n


@dataclass
class OpStats:
    """Per-op totals for a manifest."""

    count: int = 0
    result_bytes: int = 0
    payload_bytes: int = 0


def op_stats(manifest: Manifest) -> dict[str, OpStats]:
    """Count, result bytes and payload bytes per op (ops that occur only, in a stable order)."""
    stats = {op.value: OpStats() for op in Op}
    for c in manifest.chunks:
        s = stats[c.op.value]
        s.count += 1
        s.result_bytes += c.result_length
        s.payload_bytes += c.payload_length
    return {k: v for k, v in stats.items() if v.count}


def _ratio(part: int, whole: int) -> str:
    return f"{part / whole:.2%}" if whole else "n/a"


@click.group("bundle", context_settings={"help_option_names": ["-h", "--help"]})
def bundle() -> None:
    """Create, inspect and apply update bundles."""


@bundle.command("create")
@click.option("--image", required=True, type=click.Path(path_type=Path), help="The new image.")
@click.option(
    "--source",
    type=click.Path(path_type=Path),
    help="Old image: makes a delta from it (needs --source-version).",
)
@click.option("--hardware-id", required=True, help="Hardware id the image is built for.")
@click.option("--version", "version", required=True, help="Version label of the new image.")
@click.option(
    "--source-version",
    help="Version label of the --source image; required with --source (an image file carries "
    "no version, and vehicles match a delta to the version they run by it).",
)
@click.option(
    "--chunk-size",
    default="4MiB",
    show_default=True,
    callback=_chunk_size,
    help="Chunk size, e.g. 4MiB, 512KiB, 1M.",
)
@click.option(
    "--level",
    type=click.IntRange(1, 22),
    default=DEFAULT_LEVEL,
    show_default=True,
    help="zstd level.",
)
@click.option("--jobs", type=click.IntRange(min=1), help="Encoder threads [default: CPUs].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Bundle to write."
)
def create(
    image: Path,
    source: Path | None,
    hardware_id: str,
    version: str,
    source_version: str | None,
    chunk_size: int,
    level: int,
    jobs: int | None,
    quiet: bool,
    out: Path,
) -> None:
    """Encode IMAGE into a full bundle, or a delta from --source (with --source-version)."""
    if source is not None and source_version is None:
        raise click.BadParameter(
            "required with --source: the version label of the source image",
            param_hint="--source-version",
        )
    if source is None and source_version is not None:
        raise click.BadParameter("only meaningful with --source", param_hint="--source-version")
    manifest = encode_bundle(
        image,
        out,
        hardware_id=hardware_id,
        version=version,
        source=source,
        source_version=source_version,
        chunk_size=chunk_size,
        level=level,
        jobs=jobs,
        progress=not quiet,
    )
    if quiet:
        return
    size = out.stat().st_size
    length = manifest.image.length
    ops = ", ".join(f"{op} {s.count}" for op, s in op_stats(manifest).items()) or "none"
    origin = f"{manifest.source.version} -> " if manifest.source else ""
    click.echo(
        f"{manifest.kind} bundle {out}: {hardware_id} {origin}{version}, image "
        f"{format_size(length)} -> bundle {format_size(size)} ({_ratio(size, length)}), "
        f"{len(manifest.chunks)} chunks ({ops})"
    )


def _read(path: Path) -> BundleHeader:
    try:
        with path.open("rb") as f:
            return read_header(f)
    except OSError as e:
        raise BundleError(f"cannot read bundle {path}: {e.strerror or e}") from e


def _summary(path: Path, header: BundleHeader) -> dict[str, Any]:
    m = header.manifest
    return {
        "path": str(path),
        "format_version": FORMAT_VERSION,
        "file_length": header.file_length,
        "header_length": header.payload_start,
        "payload_length": m.payload_length,
        "manifest_sha256": header.manifest_sha256,
        "kind": m.kind,
        "hardware_id": m.hardware_id,
        "image": m.image.to_dict(),
        "source": None if m.source is None else m.source.to_dict(),
        "chunk_size": m.chunk_size,
        "chunk_count": len(m.chunks),
        "ratio": header.file_length / m.image.length if m.image.length else None,
        "ops": {
            op: {"count": s.count, "result_bytes": s.result_bytes, "payload_bytes": s.payload_bytes}
            for op, s in op_stats(m).items()
        },
    }


@bundle.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (with manifest).")
def inspect(file: Path, as_json: bool) -> None:
    """Show a bundle's manifest summary, operations and sizes (reads the header only)."""
    header = _read(file)
    m = header.manifest
    summary = _summary(file, header)
    if as_json:
        summary["manifest"] = m.to_dict()
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    length = m.image.length
    lines = [
        f"bundle       {file} ({header.file_length} bytes, format {FORMAT_VERSION})",
        f"kind         {m.kind}",
        f"hardware id  {m.hardware_id}",
        f"image        {m.image.version}  {m.image.length} bytes  sha256 {m.image.sha256}",
    ]
    if m.source is not None:
        lines.append(
            f"source       {m.source.version}  {m.source.length} bytes  sha256 {m.source.sha256}"
        )
    lines += [
        f"manifest     sha256 {header.manifest_sha256}",
        f"chunks       {len(m.chunks)} x {format_size(m.chunk_size)}",
        f"sizes        header {header.payload_start} B, payloads {m.payload_length} B, "
        f"bundle/image {_ratio(header.file_length, length)}",
        "",
        f"{'op':<10} {'count':>7} {'result bytes':>14} {'payload bytes':>14} {'ratio':>8}",
    ]
    for op, s in op_stats(m).items():
        lines.append(
            f"{op:<10} {s.count:>7} {s.result_bytes:>14} {s.payload_bytes:>14} "
            f"{_ratio(s.payload_bytes, s.result_bytes):>8}"
        )
    lines.append(
        f"{'total':<10} {len(m.chunks):>7} {length:>14} {m.payload_length:>14} "
        f"{_ratio(m.payload_length, length):>8}"
    )
    click.echo("\n".join(lines))


@bundle.command("apply")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--target", required=True, type=click.Path(path_type=Path), help="Write here.")
@click.option("--source", type=click.Path(path_type=Path), help="Source image (deltas).")
@click.option(
    "--progress-file", type=click.Path(path_type=Path), help="Record progress here; resume."
)
def apply(file: Path, target: Path, source: Path | None, progress_file: Path | None) -> None:
    """Apply a bundle into --target exactly as a vehicle does (verified, resumable)."""
    m = apply_bundle(file, target, source=source, progress_file=progress_file)
    click.echo(
        f"applied {m.kind} bundle {file} to {target}: {m.image.version}, "
        f"{m.image.length} bytes, sha256 {m.image.sha256}"
    )
