"""The release engineers' side: keys, the TUF image repository, building and publishing bundles.

Modules: :mod:`overdrive.keys` (key files and signers), :mod:`overdrive.signing.repository` (the TUF image
repository: load, sign, stage, publish), :mod:`overdrive.signing.release` (a build becomes bundles and TUF
targets), :mod:`overdrive.signing.verify` (check a published repository exactly as a vehicle would),
:mod:`overdrive.signing.cli` (the ``keys``, ``repo`` and ``release`` commands).
"""
