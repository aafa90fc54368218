"""scripts/mutation_check.py: each deliberate bug in the study's definitions fails the fast tests named for it."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import mutation_check  # noqa: E402


def test_every_mutation_names_existing_tests_and_edits_text_that_is_there_once():
    defined = {path.name: path.read_text() for path in (REPO / "tests").glob("test_*.py")}
    for m in mutation_check.MUTATIONS:
        assert m.tests and m.edits, m.name
        for node in m.tests:
            path, _, name = node.partition("::")
            assert f"def {name}(" in defined[path.rpartition("/")[2]], f"{m.name}: no test {node}"
        for rel, old, new in m.edits:
            assert (mutation_check.PACKAGE / rel).read_text().count(old) == 1 and old != new, f"{m.name}: {rel}"


@pytest.mark.slow
def test_mutation_check_catches_every_mutation(capsys):
    assert mutation_check.main([]) == 0
    out = capsys.readouterr().out
    assert "MISSED" not in out
    assert out.count("caught: ") == len(mutation_check.MUTATIONS)


@pytest.mark.slow
def test_a_mutation_that_changes_nothing_is_reported_missed(capsys):
    """The check is not vacuous: with the edit undone the named test passes, and the check says so."""
    real = mutation_check.MUTATIONS[-1]
    rel, old, _ = real.edits[0]
    noop = mutation_check.Mutation("no-op", ((rel, old, old),), real.tests)
    assert mutation_check.check([noop, real], jobs=2) == {"no-op": False, real.name: True}
    assert "MISSED: no-op" in capsys.readouterr().out
