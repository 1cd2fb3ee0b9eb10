"""The project's own errors: each one is a problem a user can fix, and the stage runner
(mnistgen.stage.run) prints it as one line instead of a traceback."""
from __future__ import annotations


class ProjectError(Exception):
    """A failure the user can act on; its message says what and how, in one line."""


class ParamsError(ProjectError, ValueError):
    """A problem in params.yaml, with the offending key in the message."""


def one_line(err: BaseException, limit: int = 200) -> str:
    """An error's text on one line, cut to `limit` characters: how another program's
    (MLflow's, SQLite's, a server's) error is quoted inside one of ours."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."
