"""What a run is called and where it belongs: one record that the loggers and callbacks map to their own terms."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunInfo:
    """A run's name, tags, kind and group (its sweep), the logger run it continues, and the settings a resume changed."""

    name: str
    tags: list[str] = field(default_factory=list)
    kind: str = "run"  # what sort of job this is (the objective's kind, "diagnose"): W&B's job type
    group: str | None = None  # the sweep folder's name inside a multirun, else None
    resume_id: str | None = None  # the logger run a resumed run continues (a W&B run id), else None
    resume_step: int | None = None  # the step a resumed run continues from (its checkpoint's), else None
    changes: list[dict] = field(default_factory=list)  # settings a resumed run changed against its checkpoint


def given_run(factory, run: RunInfo):
    """Call a built config node's factory (a partial), passing `run` when its target's constructor takes it."""
    return factory(run=run) if "run" in inspect.signature(factory.func).parameters else factory()
