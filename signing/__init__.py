"""The release engineers' side: keys, the TUF image repository, building and publishing bundles.

Modules: :mod:`signing.keys` (key files and signers), :mod:`signing.repository` (the TUF image
repository: load, sign, stage, publish), :mod:`signing.release` (a build becomes bundles and TUF
targets), :mod:`signing.verify` (check a published repository exactly as a vehicle would),
:mod:`signing.cli` (the ``keys``, ``repo`` and ``release`` commands).
"""
