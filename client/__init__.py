"""The vehicle client: what runs in the car.

Modules, one concept each: :mod:`overdrive.client.config` (the vehicle's configuration), :mod:`overdrive.client.state`
(the persisted update state machine), :mod:`overdrive.client.identity` (the vehicle's key),
:mod:`overdrive.client.events` (the on-disk event queue), :mod:`overdrive.client.api` (talking to the rollout server),
:mod:`overdrive.client.trust` (TUF and the director's assignments), :mod:`overdrive.client.download`,
:mod:`overdrive.client.install` (bundle into the inactive slot), :mod:`overdrive.client.bootchooser` and
:mod:`overdrive.client.bootenv` (A/B boot control), :mod:`overdrive.client.daemon` (the update loop),
:mod:`overdrive.client.boot` (the simulated bootloader + health check), :mod:`overdrive.client.cli`.

It needs only the base install: no Flask, SQLAlchemy or boto3.
"""
