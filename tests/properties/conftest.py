"""Hypothesis settings of the property suite: the same examples on every run.

``derandomize=True`` seeds each test from its own source, and ``database=None`` keeps no
examples between runs, so CI and a laptop run exactly the same inputs. Other profiles, chosen with
``MSM_HYPOTHESIS_PROFILE``:

- ``noshrink``: the same examples, but a failure is reported as found, not shrunk (quick to check
  that the suite still catches a known bug: ``MSM_PROPERTIES_KNOWN_BUGS=2``);
- ``explore``: fresh random examples on every run, for a bug hunt (never in CI).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
               HealthCheck.large_base_example]
# no Phase.explain: it traces every line (sys.settrace on Python < 3.12) and takes minutes here
_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)

settings.register_profile("msm", derandomize=True, database=None, print_blob=False, phases=_PHASES,
                          suppress_health_check=_SUPPRESSED)
settings.register_profile("noshrink", parent=settings.get_profile("msm"), phases=_PHASES[:-1])
settings.register_profile("explore", derandomize=False, database=None, print_blob=True, phases=_PHASES,
                          suppress_health_check=_SUPPRESSED)
settings.load_profile(os.environ.get("MSM_HYPOTHESIS_PROFILE", "msm"))
