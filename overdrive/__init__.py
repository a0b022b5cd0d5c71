"""Overdrive core: what every role shares.

The bundle format and delta codec, storage backends, the TUF layout conventions of the image
repository, and the root ``overdrive`` command (which loads each role's commands lazily so that a
vehicle install never imports the server or signing stacks).
"""

__version__ = "0.1.0"
