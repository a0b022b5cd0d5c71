"""The operators' web dashboard: server-rendered pages under ``/dashboard/``.

Register :data:`bp` on the app made by :func:`overdrive.server.app.create_app`. The dashboard signs people
in with the same API tokens as the REST API (see :mod:`overdrive.server.dashboard.security`) and calls the
same domain functions (:mod:`overdrive.server.campaigns`), so the rules, the errors and the audit log are
exactly those of the API. Everything it needs (templates, CSS, a little JavaScript) is served from
this package: no build step, no CDN, no external fonts.
"""

from __future__ import annotations

import overdrive.server.dashboard.views  # noqa: F401  (importing it registers the routes on bp)
from overdrive.server.dashboard.blueprint import bp

__all__ = ["bp"]
