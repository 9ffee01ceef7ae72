"""The do-no-harm cases' lengths in CI (tests/e2e/test_harm.py); the cases themselves are bench/harm_bed.py,
shared with bench/bench_watch.py, which runs them with its longer defaults.

Issue 8 asks for a saturated load of at least 60 s in CI (2 minutes in the bench), a model load of
60 s under load, an admin's stop watched for 60 s, and one generation streamed for 3 minutes.  All
four run at those figures here; the stream's is the only one the bench alone can make longer.  With
the shipped defaults the watchdog probes every second (``watch_period``), restarts after 3 failed
probes (``watch_failure_threshold``), calls a runner deep-wedged after 8 s of silence
(``deep_confirm``) and ignores the first 10 s after a start (``watch_startup_grace``): each case
outlasts the longest of those windows many times.  (The model-load verdict's ``load_timeout`` of
300 s is longer than either load: neither run reaches it.)  The harm module runs beside the rest
of the suite (tests/ci.py), which keeps the whole CI run on three releases under an hour.
"""

from __future__ import annotations

#: Saturated load: clients at twice the capacity for this long (bench: 120 s).
SATURATED_SECONDS = 60.0
#: One streamed generation holding the only slot for this long (bench: 180 s).
STREAM_SECONDS = 180.0
#: Each of the two model loads under load takes this long (bench: 60 s).
LOAD_SECONDS = 60.0
#: How long an admin's ``systemctl stop`` is watched with the watchdog running (bench: 60 s).
STOP_SECONDS = 60.0
