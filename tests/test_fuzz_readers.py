"""Every reader of a user's file, fuzzed: it returns a valid result or raises our own error.

The targets (seed files, mutations, the reader call, what an accepted result must satisfy) are
in ``fuzz_targets.py``; ``benchmarks/fuzz_readers.py --examples N`` runs the same properties
for longer. Derandomized with a fixed example count, so a run is fast and reproducible.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_targets import TARGET_FACTORIES, run_example, target

# examples per reader: enough to hit every mutation kind a few times, small enough that the
# whole module stays well under a minute on a loaded 2-core machine
EXAMPLES = {"dicom": 40, "png": 40, "gate_schema": 40}
DEFAULT_EXAMPLES = 50


@pytest.mark.parametrize("name", sorted(TARGET_FACTORIES))
def test_reader_survives_fuzzing(name):
    t = target(name)
    outcomes = []

    @settings(derandomize=True, max_examples=EXAMPLES.get(name, DEFAULT_EXAMPLES), deadline=None,
              database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                    HealthCheck.large_base_example])
    @given(data=st.data())
    def prop(data):
        outcomes.append(run_example(t, data.draw(t.strategy(), label=name)))

    valid = t.valid()
    assert valid and [run_example(t, data) for data in valid] == ["accepted"] * len(valid)
    prop()
    assert "refused" in outcomes, outcomes  # the mutations do break files
