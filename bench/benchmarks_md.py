"""Assemble ``BENCHMARKS.md`` from the reports the benchmarks write into ``bench/results/``.

Each benchmark script owns one file there (``deltas.md``, ``poll.md``, ``soak.md``,
``simulate.md``) and calls :func:`assemble` when it has written it, so a rerun of one benchmark
never loses another's figures. ``python bench/benchmarks_md.py`` does the same by hand.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE.parent / "BENCHMARKS.md"
#: The delta benchmark comes first (it carries the bundle goals); then the others, in this order.
FIRST = "deltas.md"
OTHERS = ("rollout-safety.md", "poll.md", "poll-ecus.md", "soak.md", "simulate.md", "e2e-vm.md")


def assemble(results: Path = RESULTS, out: Path = OUT) -> Path:
    """Write ``out`` from the reports present in ``results``; return ``out``."""
    parts = []
    if (results / FIRST).exists():
        parts.append((results / FIRST).read_text().rstrip() + "\n")
    others = [results / name for name in OTHERS if (results / name).exists()]
    if others:
        parts.append(
            "---\n\n# Other benchmarks\n\n"
            "Each section below is written by its own script into `bench/results/` and copied "
            "here by `bench/benchmarks_md.py`.\n"
        )
        parts += [path.read_text().rstrip() + "\n" for path in others]
    out.write_text("\n".join(parts))
    return out


if __name__ == "__main__":
    print(f"wrote {assemble()}")
