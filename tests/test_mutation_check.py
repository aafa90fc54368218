"""scripts/mutation_check.py: each deliberate bug in the study's definitions fails the fast tests named for it."""

from __future__ import annotations

import os
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
def test_mutation_check_catches_every_mutation_and_reports_a_no_op_missed(capsys):
    """Every deliberate bug fails its tests; and the check is not vacuous: a mutation whose edit changes nothing
    leaves its tests passing, and the check says so."""
    real = mutation_check.MUTATIONS[-1]
    rel, old, _ = real.edits[0]
    noop = mutation_check.Mutation("no-op", ((rel, old, old),), real.tests)
    caught = mutation_check.check([noop, *mutation_check.MUTATIONS], jobs=os.cpu_count() or 1)
    assert caught == {"no-op": False, **{m.name: True for m in mutation_check.MUTATIONS}}
    out = capsys.readouterr().out
    assert "MISSED: no-op" in out and out.count("caught: ") == len(mutation_check.MUTATIONS)


@pytest.mark.parametrize("caught,code", [({"a": True, "b": True}, 0), ({"a": True, "b": False}, 1)])
def test_the_script_exits_1_when_a_mutation_is_missed(caught, code, monkeypatch):
    monkeypatch.setattr(mutation_check, "check", lambda chosen, jobs: caught)
    assert mutation_check.main([]) == code
