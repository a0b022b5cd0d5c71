"""The campaign timeline as an inline SVG drawn on the server: vehicles per state over time.

The page needs no JavaScript and no chart library for it: this module turns the samples of
:func:`overdrive.server.campaign_view.timeline` into path data, axis ticks and labels, and the template
writes the ``<svg>``. The evaluator records a sample whenever the counts it sees have changed,
so every band is a step function: a sample's counts held until the next sample. After the last
one, a campaign still going may have moved on without the evaluator seeing it yet: given its
``current`` counts, the chart draws them from the evaluator's last look (``checked``) to
``end`` (now). Every time shown is UTC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from overdrive.server.dashboard.formatting import as_datetime, when

#: Bands from the bottom up, with their labels and the progress bar's colour classes.
BANDS = (
    ("committed", "Committed", "committed"),
    ("failures", "Failed or rolled back", "failed"),
    ("in_progress", "In progress", "in_progress"),
    ("pending", "Not yet admitted", "waiting"),
)
WIDTH, HEIGHT = 960.0, 260.0
LEFT, RIGHT, TOP, BOTTOM = 46.0, 14.0, 12.0, 30.0
#: Candidate spacings of the time axis's ticks, in seconds (at most ``MAX_X_TICKS`` are drawn).
X_STEPS = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)
MAX_X_TICKS = 7
#: Hover titles per sample only up to this many samples (each is an SVG element).
MAX_HOVER = 240
#: The data table under the chart shows the most recent samples, at most this many.
TABLE_ROWS = 50


@dataclass(frozen=True)
class Band:
    """One state's band: its path, label, colour class and count at the end."""

    name: str
    label: str
    colour: str
    path: str
    last: int


@dataclass(frozen=True)
class Tick:
    """An axis tick: its position in the SVG's coordinates and its label."""

    at: float
    label: str


@dataclass(frozen=True)
class Column:
    """One sample's slice of the plot, with a hover title that lists its counts."""

    x: float
    width: float
    title: str


@dataclass(frozen=True)
class Chart:
    """Everything the template draws, in the SVG's user units (``WIDTH`` × ``HEIGHT``)."""

    bands: list[Band]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    columns: list[Column]
    start: str
    end: str
    total: int
    samples: int
    rows: list[dict[str, Any]]
    width: float = WIDTH
    height: float = HEIGHT
    left: float = LEFT
    right: float = WIDTH - RIGHT
    top: float = TOP
    bottom: float = HEIGHT - BOTTOM

    @property
    def summary(self) -> str:
        """The chart in one sentence, for screen readers (the SVG's description)."""
        now = ", ".join(f"{b.last} {b.label.lower()}" for b in reversed(self.bands))
        return f"{self.samples} samples from {self.start} to {self.end}; at the end: {now}."


def nice_step(total: int, ticks: int = 4) -> int:
    """A round spacing (1, 2, 5 × 10ⁿ) giving at most about ``ticks`` steps up to ``total``."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if total / (step * factor) <= ticks:
                return step * factor
        step *= 10


def _time_label(moment: datetime, step: int, span: float) -> str:
    if step >= 86400:
        return f"{moment:%m-%d}"
    if span > 86400:
        return f"{moment:%m-%d %H:%M}"
    return f"{moment:%H:%M}"


def timeline_chart(
    timeline: dict[str, Any],
    end: datetime | None = None,
    *,
    current: dict[str, int] | None = None,
    checked: datetime | str | None = None,
) -> Chart | None:
    """The chart of ``timeline`` (``{"samples": [{"at", "pending", …}]}``) up to ``end``
    (default: the last sample), with the ``current`` counts (same keys) from ``checked`` on
    when they differ from the last sample; ``None`` when there is no sample to draw."""
    samples = [
        (moment, sample)
        for sample in timeline.get("samples", [])
        if (moment := as_datetime(sample.get("at"))) is not None
    ]
    if not samples:
        return None
    recorded = len(samples)
    start = samples[0][0]
    finish = max(as_datetime(end) or samples[-1][0], samples[-1][0])
    names = [name for name, _label, _colour in BANDS]
    if current is not None and any(current.get(n) != samples[-1][1].get(n) for n in names):
        since = min(max(as_datetime(checked) or samples[-1][0], samples[-1][0]), finish)
        samples.append((since, current))
    span = max((finish - start).total_seconds(), 1.0)
    values = [[max(int(sample.get(name) or 0), 0) for name in names] for _at, sample in samples]
    total = max(max(sum(row) for row in values), 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(moment: datetime) -> float:
        return round(LEFT + plot_w * (moment - start).total_seconds() / span, 1)

    def y(count: float) -> float:
        return round(TOP + plot_h * (1 - count / total), 1)

    edges = [x(moment) for moment, _sample in samples] + [x(finish)]
    bands = []
    for k, (name, label, colour) in enumerate(BANDS):
        lower = [sum(row[:k]) for row in values]
        upper = [sum(row[: k + 1]) for row in values]
        path = _step_path(edges, upper, lower, y)
        bands.append(Band(name, label, colour, path, values[-1][k]))

    step = next((s for s in X_STEPS if span / s <= MAX_X_TICKS), X_STEPS[-1])
    first = datetime.fromtimestamp(-(-start.timestamp() // step) * step, UTC)
    x_ticks = []
    moment = first
    while moment <= finish:
        x_ticks.append(Tick(x(moment), _time_label(moment, step, span)))
        moment += timedelta(seconds=step)
    y_step = nice_step(total)
    y_ticks = [Tick(y(n), str(n)) for n in range(0, total + 1, y_step)]
    if total % y_step:
        y_ticks.append(Tick(y(total), str(total)))

    columns = []
    if len(samples) <= MAX_HOVER:
        for i, (moment, _sample) in enumerate(samples):
            counts = ", ".join(f"{values[i][k]} {BANDS[k][1].lower()}" for k in range(len(BANDS)))
            label = when(moment, True) if i < recorded else f"now (since {when(moment, True)})"
            columns.append(
                Column(edges[i], max(edges[i + 1] - edges[i], 0.5), f"{label}: {counts}")
            )
    rows = [
        {"at": moment, **dict(zip(names, values[i], strict=True))}
        for i, (moment, _sample) in enumerate(samples[:recorded])
    ][-TABLE_ROWS:]
    rows.reverse()
    return Chart(
        bands=bands,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        columns=columns,
        start=when(start),
        end=when(finish),
        total=total,
        samples=recorded,
        rows=rows,
    )


def _step_path(
    edges: list[float], upper: list[int], lower: list[int], y: Callable[[float], float]
) -> str:
    """A closed path: along the band's top edge left to right, back along its bottom edge."""
    points = []
    for i in range(len(upper)):
        points += [(edges[i], y(upper[i])), (edges[i + 1], y(upper[i]))]
    for i in reversed(range(len(lower))):
        points += [(edges[i + 1], y(lower[i])), (edges[i], y(lower[i]))]
    return "M" + " L".join(f"{px:g},{py:g}" for px, py in points) + " Z"
