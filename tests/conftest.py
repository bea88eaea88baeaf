"""Suite-wide settings: property-based tests are derandomized in CI and keep no database.

With ``CI`` set (CI runs ``.ci/run`` with ``CI=true``) hypothesis draws the same examples on
every run and writes no example database, so one unlucky draw cannot make a clean tree red and
nothing is left in the checkout; elsewhere it explores freely (still without a database in the
checkout: ``.hypothesis/`` is ignored by git).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
