"""Test configuration: Triton runs in its CPU interpreter (set before any kernel module is
imported) and hypothesis is deterministic under CI."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25)
settings.register_profile("dev", deadline=None, max_examples=25)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
