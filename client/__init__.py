"""The vehicle client: what runs in the car.

Modules, one concept each: :mod:`client.config` (the vehicle's configuration), :mod:`client.state`
(the persisted update state machine), :mod:`client.identity` (the vehicle's key),
:mod:`client.events` (the on-disk event queue), :mod:`client.api` (talking to the rollout server),
:mod:`client.trust` (TUF and the director's assignments), :mod:`client.download`,
:mod:`client.install` (bundle into the inactive slot), :mod:`client.bootchooser` and
:mod:`client.bootenv` (A/B boot control), :mod:`client.daemon` (the update loop),
:mod:`client.boot` (the simulated bootloader + health check), :mod:`client.cli`.

It needs only the base install: no Flask, SQLAlchemy or boto3.
"""
