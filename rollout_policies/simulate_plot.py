"""Draw a simulated campaign: vehicles per state over time, with the stage boundaries.

matplotlib is optional (it is only needed for ``overdrive simulate --plot``), imported when a plot
is drawn, and used through :class:`matplotlib.figure.Figure` directly, never ``pyplot``: no
global state, no GUI backend, safe to call from tests running in parallel. A multi-ECU fleet
gets a second panel: per hardware id, the vehicles updated, rolled back, and the rollbacks its
ECUs caused.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from overdrive.rollout_policies.simulate import (
    STATES,
    SimulationError,
    SimulationResult,
    format_seconds,
)

PLOT_SUFFIXES = (".png", ".svg")
MATPLOTLIB_HINT = "pip install matplotlib, or pip install 'overdrive[simulate]'"
_COLOURS = {
    "idle": "#9e9e9e",
    "admitted": "#1f77b4",
    "installing": "#ff7f0e",
    "succeeded": "#2ca02c",
    "failed": "#d62728",
}
_LABELS = {"failed": "failed (rolled back)"}
_HARDWARE_BARS = (
    ("succeeded", "updated", "#2ca02c"),
    ("rolled_back", "rolled back", "#d62728"),
    ("rollbacks_caused", "rollbacks caused", "#7f0000"),
)


def check_plot_target(path: Path) -> None:
    """Fail before simulating if ``path`` cannot be drawn: wrong suffix, or no matplotlib."""
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise SimulationError(f"--plot: the file must end in .png or .svg, got {str(path)!r}")
    if not path.parent.is_dir():
        raise SimulationError(f"--plot: directory {str(path.parent)!r} does not exist")
    if importlib.util.find_spec("matplotlib") is None:
        raise SimulationError(
            f"--plot needs matplotlib, which is not installed ({MATPLOTLIB_HINT})"
        )


def plot(result: SimulationResult, path: Path, title: str) -> None:
    """Write the timeline of ``result`` to ``path`` (PNG or SVG, by its suffix)."""
    check_plot_target(path)
    from matplotlib.figure import Figure

    samples = result.series
    hours = max(result.ended_at, 1.0) / 3600
    scale, unit = (24.0, "days") if hours > 72 else (1.0, "hours")
    times = [s[0] / 3600 / scale for s in samples]
    multi = result.config.multi_ecu
    figure = Figure(figsize=(11, 9.0 if multi else 5.5), layout="constrained")
    if multi:
        axes, bars = figure.subplots(2, 1, height_ratios=(3, 2))
        _hardware_panel(bars, result)
    else:
        axes = figure.add_subplot()
    for column, state in enumerate(STATES, start=1):
        axes.step(
            times,
            [s[column] for s in samples],
            where="post",
            label=_LABELS.get(state, state),
            color=_COLOURS[state],
            linewidth=1.6,
        )
    axes.set_yscale("symlog", linthresh=10)
    axes.set_ylim(0, result.eligible * 1.6)
    axes.set_xlim(0, hours / scale * 1.02)
    for stage in result.stages:
        x = stage.started_at / 3600 / scale
        axes.axvline(x, color="#555555", linestyle="--", linewidth=0.8)
        axes.annotate(
            f"{stage.name} ({stage.target:,})",
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -4),
            textcoords="offset points",
            rotation=90,
            va="top",
            fontsize=8,
            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"},
        )
    for at, colour, label in (
        (result.halted_at, "#000000", result.outcome),
        (result.completed_at, "#006400", "completed"),
    ):
        if at is not None:
            axes.axvline(
                at / 3600 / scale,
                color=colour,
                linestyle="-.",
                linewidth=1.4,
                label=f"{label} at {format_seconds(at)}",
            )
    axes.set_xlabel(f"simulated time since the campaign started ({unit})")
    axes.set_ylabel("vehicles (symmetric log scale)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    metadata = {"Date": None} if path.suffix.lower() == ".svg" else None
    _save(figure, path, metadata)


def _hardware_panel(axes: Any, result: SimulationResult) -> None:
    """Grouped horizontal bars, one group per hardware id (the first at the top)."""
    names = list(result.hardware)
    height = 0.8 / len(_HARDWARE_BARS)
    for offset, (field, label, colour) in enumerate(_HARDWARE_BARS):
        values = [getattr(result.hardware[hw], field) for hw in names]
        ys = [i + (offset - 1) * height for i in range(len(names))]
        axes.barh(ys, values, height=height, label=label, color=colour)
        for y, value in zip(ys, values, strict=True):
            axes.annotate(
                f"{value:,}",
                (value, y),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
    axes.set_yticks(range(len(names)), names)
    axes.invert_yaxis()
    axes.set_xscale("symlog", linthresh=10)
    most = max((c.started for c in result.hardware.values()), default=0)
    axes.set_xlim(0, max(most, 10) * 3)
    axes.set_xlabel("vehicles with an ECU of the hardware id (symmetric log scale)")
    axes.set_title(
        "per hardware id: a vehicle is updated only if every ECU succeeded; a rollback is "
        "caused by the first ECU that failed",
        fontsize=9,
    )
    axes.grid(True, axis="x", which="major", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def _save(figure: Any, path: Path, metadata: dict[str, Any] | None) -> None:
    try:
        figure.savefig(path, metadata=metadata)
    except OSError as e:
        raise SimulationError(f"--plot: cannot write {str(path)!r}: {e.strerror or e}") from e
