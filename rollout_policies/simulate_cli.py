"""``overdrive simulate``: dry-run a rollout policy over a synthetic fleet before it touches a car.

The command reads its options (:mod:`overdrive.rollout_policies.simulate_parse`), runs the pure simulation
(:mod:`overdrive.rollout_policies.simulate`), and prints the report (:mod:`overdrive.rollout_policies.simulate_report`)
or JSON, optionally drawing a plot (:mod:`overdrive.rollout_policies.simulate_plot`, needs matplotlib).
Options are taken as text and parsed here so every mistake is one ``error:`` line (exit 1), the
same as the other ``overdrive`` commands, instead of click's multi-line usage errors. The fleet
file of a multi-ECU fleet (``--fleet-file``) is read here, like a policy file, and validated by
:mod:`overdrive.rollout_policies.simulate_ecus`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from overdrive.rollout_policies.cli import resolve
from overdrive.rollout_policies.documents import read_document
from overdrive.rollout_policies.errors import PolicyFileError
from overdrive.rollout_policies.simulate import SimulationConfig, SimulationError, VehicleModel
from overdrive.rollout_policies.simulate import simulate as run
from overdrive.rollout_policies.simulate_ecus import parse_models
from overdrive.rollout_policies.simulate_model import DEFAULT_FLEET
from overdrive.rollout_policies.simulate_parse import (
    parse_count,
    parse_fleet_options,
    parse_optional_seconds,
    parse_optional_spread,
    parse_rate,
    parse_seconds,
    parse_seed,
    parse_size,
    parse_spread,
    parse_start,
)
from overdrive.rollout_policies.simulate_plot import check_plot_target, plot
from overdrive.rollout_policies.simulate_report import render


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--policy", "policy_spec", metavar="NAME|FILE", help="A preset name or a policy file."
)
@click.option("--vehicles", default="10000", show_default=True, metavar="N", help="Fleet size.")
@click.option(
    "--fleet",
    multiple=True,
    metavar="[DIMENSION:]VALUE=FRACTION,…",
    help="The fleet's mix, fractions (0.1 or 10%) summing to 1: hardware ids "
    "(ecu-a=0.9,ecu-b=0.1; default ecu-a=1), or with a DIMENSION: prefix another cohort "
    "(region:eu=0.6,us=0.4); repeatable.",
)
@click.option(
    "--fleet-file",
    type=click.Path(path_type=Path),  # read errors are one line from load_models
    metavar="FILE",
    help="Multi-ECU vehicles (YAML or JSON): vehicle models with their fleet shares and each "
    "one's ECUs (hardware ids in install order, optional per-ECU fail_rate). A vehicle is "
    "updated only if every ECU succeeds; one failing ECU rolls the vehicle back. Replaces the "
    "hardware mix of --fleet.",
)
@click.option(
    "--fail-rate",
    metavar="RATE",
    help="Probability that an installing vehicle fails and rolls back (with --fleet-file: that "
    "each ECU of a failing group fails, rolling back its vehicle) "
    "[default: 1 with --fail-on, else 0].",
)
@click.option(
    "--fail-on",
    multiple=True,
    metavar="HW|DIMENSION=VALUE",
    help="The release fails (at --fail-rate) only on this hardware id or cohort value "
    "(region=eu; with --fleet-file also model=NAME); repeatable.",
)
@click.option(
    "--poll-interval",
    default="15m",
    show_default=True,
    metavar="DURATION",
    help="How often each vehicle polls (each from its own random phase).",
)
@click.option(
    "--install-time",
    default="20m±5m",
    show_default=True,
    metavar="DURATION[±DURATION]",
    help="Download + install + reboot + health check, uniform in the ± range (or +-).",
)
@click.option(
    "--offline-rate",
    default="0",
    show_default=True,
    metavar="RATE",
    help="Fraction of vehicles offline when the campaign starts.",
)
@click.option(
    "--offline-for",
    default="1d±1d",
    show_default=True,
    metavar="DURATION[±DURATION]|forever",
    help="How long offline vehicles stay offline.",
)
@click.option(
    "--tick", default="1m", show_default=True, metavar="DURATION", help="Evaluator period."
)
@click.option(
    "--auto-approve-after",
    default="0",
    show_default=True,
    metavar="DURATION|never",
    help="Approve a manual_approval stage this long after it starts (0: at once).",
)
@click.option(
    "--full-size", default="200MiB", show_default=True, metavar="SIZE", help="Full bundle size."
)
@click.option(
    "--delta-size", default="20MiB", show_default=True, metavar="SIZE", help="Delta bundle size."
)
@click.option(
    "--delta-share",
    default="0.8",
    show_default=True,
    metavar="RATE",
    help="Fraction of vehicles that download a delta instead of the full bundle.",
)
@click.option(
    "--start",
    default="2025-01-06T09:00",
    show_default=True,
    metavar="DATETIME",
    help="Campaign start in the vehicles' local time (matters for maintenance windows).",
)
@click.option(
    "--max-time",
    default="30d",
    show_default=True,
    metavar="DURATION",
    help="Stop a campaign still running after this long.",
)
@click.option("--seed", default="0", show_default=True, metavar="N", help="Random seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE.png|FILE.svg",
    help="Draw vehicles per state over time (needs matplotlib).",
)
def simulate(
    policy_spec: str | None,
    vehicles: str,
    fleet: tuple[str, ...],
    fleet_file: Path | None,
    fail_rate: str | None,
    fail_on: tuple[str, ...],
    poll_interval: str,
    install_time: str,
    offline_rate: str,
    offline_for: str,
    tick: str,
    auto_approve_after: str,
    full_size: str,
    delta_size: str,
    delta_share: str,
    start: str,
    max_time: str,
    seed: str,
    as_json: bool,
    plot_path: Path | None,
) -> None:
    """Dry-run a rollout policy: run the real engine over a synthetic fleet in accelerated time.

    Prints the stage timeline, when a breach halted the campaign, how many vehicles installed
    the bad release first (the blast radius), how many rolled back, when a good release
    completes and the bytes shipped. Deterministic for a given --seed.

    \b
    Example: a release that breaks every ecu-b vehicle (10% of the fleet):
      overdrive simulate --policy canary --vehicles 100000 \\
          --fleet ecu-a=0.9,ecu-b=0.1 --fail-on ecu-b

    \b
    Multi-ECU vehicles, one software set each (see docs/simulate.md for the file):
      overdrive simulate --policy canary --vehicles 100000 --fleet-file fleet.yaml
    """
    if not policy_spec:
        raise SimulationError("--policy: required (a preset name or a policy file)")
    source, policy = resolve(policy_spec)
    hardware, cohorts = parse_fleet_options(fleet)
    models: tuple[VehicleModel, ...] = ()
    if fleet_file is not None:
        if hardware is not None:
            raise SimulationError(
                "--fleet: the hardware ids come from --fleet-file's models; give --fleet "
                "only DIMENSION: cohorts with it"
            )
        models = load_models(fleet_file)
    failing = tuple(hw.strip() for spec in fail_on for hw in spec.split(",") if hw.strip())
    if fail_rate is None:  # --fail-on alone: the release breaks every vehicle there
        fail_rate = "1" if failing else "0"
    config = SimulationConfig(
        policy=policy,
        vehicles=parse_count(vehicles, "--vehicles"),
        fleet=hardware or DEFAULT_FLEET,
        models=models,
        cohorts=cohorts,
        fail_rate=parse_rate(fail_rate, "--fail-rate"),
        fail_on=failing,
        poll_interval=parse_seconds(poll_interval, "--poll-interval", minimum=1),
        install_time=parse_spread(install_time, "--install-time"),
        offline_rate=parse_rate(offline_rate, "--offline-rate"),
        offline_for=parse_optional_spread(offline_for, "--offline-for"),
        tick=parse_seconds(tick, "--tick", minimum=1),
        auto_approve_after=parse_optional_seconds(auto_approve_after, "--auto-approve-after"),
        full_size=parse_size(full_size, "--full-size"),
        delta_size=parse_size(delta_size, "--delta-size"),
        delta_share=parse_rate(delta_share, "--delta-share"),
        start=parse_start(start),
        max_time=parse_seconds(max_time, "--max-time", minimum=1),
        seed=parse_seed(seed),
    )
    if plot_path is not None:
        check_plot_target(plot_path)
    result = run(config)
    if plot_path is not None:
        title = f"{source}, {config.vehicles:,} vehicles, seed {config.seed}: {result.outcome}"
        plot(result, plot_path, title)
    if as_json:
        data = result.to_dict()
        data["source"] = source
        data["plot"] = str(plot_path) if plot_path is not None else None
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    click.echo(render(result, source))
    if plot_path is not None:
        click.echo(f"plot: {plot_path}")


def load_models(path: Path) -> tuple[VehicleModel, ...]:
    """Read and validate a fleet file (``.json`` as JSON, anything else as YAML)."""
    try:
        document = read_document(path)
    except PolicyFileError as e:
        raise SimulationError(f"--fleet-file {e}") from e
    return parse_models(document, str(path))
