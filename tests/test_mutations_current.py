"""Every mutation of tests/mutations.py still applies: its snippet occurs exactly once in its file.

A reformat or refactor that moves a snippet turns its mutation STALE, and the mutation check silently stops
checking that line; this catches it in CI (the mutation runs themselves take minutes and stay manual).
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from mutations import MUTATIONS, ROOT


@pytest.mark.parametrize("m", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_mutation_snippet_occurs_once(m):
    with open(os.path.join(ROOT, m.path)) as f:
        text = f.read()
    assert text.count(m.old) == 1, f"{m.name}: its snippet occurs {text.count(m.old)} times in {m.path}"
    assert m.new != m.old
