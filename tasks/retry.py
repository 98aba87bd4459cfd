"""When a task's retry can help: a failure that can pass (a server hiccup, a file being written), never one
that the same call will meet again (a refusal, a missing champion, a malformed input)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def retry_unless(*permanent: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A ``retry_condition_fn`` that retries every failure except the ``permanent`` exception types."""

    def transient(task: Any, task_run: Any, state: Any) -> bool:
        return not isinstance(state.result(raise_on_failure=False), permanent)

    return transient
