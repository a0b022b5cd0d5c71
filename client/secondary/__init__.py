"""A secondary ECU: ``overdrive vehicle secondary …``, a process of its own that the primary
reaches over TCP (see :mod:`overdrive.client.secondary_link` for the primary's side).

It keeps its own state directory (configuration, ed25519 key, trusted director and image
repository roots, A/B slots and boot environment), verifies every update itself — fully (both
repositories, TUF's whole workflow, as the primary does) or partially (the director's
``targets`` signature, then the image's length and sha256) — and signs its own version reports,
so a compromised primary can neither make it install what the director did not sign for it nor
forge what it reports.

* :mod:`.config` — ``secondary.toml``;
* :mod:`.state` — ``state.json``, the set's stages, written before every effect;
* :mod:`.boot` — its boot environment, kept in line with the state;
* :mod:`.verify` — full and partial verification of the files the primary forwards;
* :mod:`.bundle` — receiving a bundle through the verified length, describing it;
* :mod:`.base` — the bookkeeping every operation shares (one at a time, state first);
* :mod:`.ecu` — the operations (report, verify, stage, install, trial, commit, rollback);
* :mod:`.server` — the bounded TCP server;
* :mod:`.cli` — ``init``, ``serve``, ``status``.
"""
