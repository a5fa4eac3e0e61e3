"""CI provider detection from an environment mapping (pure: pass ``os.environ`` in).

:func:`detect` recognises Buildkite, GitHub Actions, CircleCI, GitLab CI, Jenkins and a
generic ``CI=true``, and reads what each provides: build id, job id, branch, commit, pull
request, build URL and, where the CI runs parallel jobs itself, the 0-based shard index and the
shard count.  Values that are missing, empty or malformed are left as ``None``: detection never
fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final, NamedTuple


class CiInfo(NamedTuple):  # not a dataclass: cheaper to define, in every pytest start
    provider: str | None = None  # "buildkite", "github_actions", ..., "generic"; None: not CI
    build_id: str | None = None
    job_id: str | None = None
    branch: str | None = None
    commit: str | None = None
    pull_request: str | None = None
    build_url: str | None = None
    shard_index: int | None = None  # 0-based
    shard_total: int | None = None


NOT_CI: Final = CiInfo()


def _get(env: Mapping[str, str], *names: str) -> str | None:
    """The first of ``names`` set to a non-empty value."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _shard(index: str | None, total: str | None, *, base: int = 0) -> tuple[int | None, int | None]:
    """A valid (0-based index, total) pair, or (None, None)."""
    if not (index and total and index.isdigit() and total.isdigit()):
        return None, None
    i, n = int(index) - base, int(total)
    if n < 1 or not 0 <= i < n:
        return None, None
    return i, n


def _pr_number(value: str | None) -> str | None:
    """``123`` from ``123``, ``refs/pull/123/merge`` or ``https://.../pull/123``."""
    if not value or value.lower() == "false":
        return None
    match = re.search(r"(\d+)(?:/merge|/head)?/?$", value)
    return match.group(1) if match else None


def _buildkite(env: Mapping[str, str]) -> CiInfo:
    index, total = _shard(
        env.get("BUILDKITE_PARALLEL_JOB"), env.get("BUILDKITE_PARALLEL_JOB_COUNT")
    )
    return CiInfo(
        provider="buildkite",
        build_id=_get(env, "BUILDKITE_BUILD_ID"),
        job_id=_get(env, "BUILDKITE_JOB_ID"),
        branch=_get(env, "BUILDKITE_BRANCH"),
        commit=_get(env, "BUILDKITE_COMMIT"),
        pull_request=_pr_number(_get(env, "BUILDKITE_PULL_REQUEST")),
        build_url=_get(env, "BUILDKITE_BUILD_URL"),
        shard_index=index,
        shard_total=total,
    )


def _github(env: Mapping[str, str]) -> CiInfo:
    run_id = _get(env, "GITHUB_RUN_ID")
    server, repo = _get(env, "GITHUB_SERVER_URL"), _get(env, "GITHUB_REPOSITORY")
    url = f"{server}/{repo}/actions/runs/{run_id}" if server and repo and run_id else None
    ref = _get(env, "GITHUB_REF") or ""
    return CiInfo(
        provider="github_actions",
        build_id=run_id,
        job_id=_get(env, "GITHUB_JOB"),
        branch=_get(env, "GITHUB_HEAD_REF", "GITHUB_REF_NAME"),
        commit=_get(env, "GITHUB_SHA"),
        pull_request=_pr_number(ref) if ref.startswith("refs/pull/") else None,
        build_url=url,
    )


def _circleci(env: Mapping[str, str]) -> CiInfo:
    index, total = _shard(env.get("CIRCLE_NODE_INDEX"), env.get("CIRCLE_NODE_TOTAL"))
    return CiInfo(
        provider="circleci",
        build_id=_get(env, "CIRCLE_WORKFLOW_ID", "CIRCLE_BUILD_NUM"),
        job_id=_get(env, "CIRCLE_BUILD_NUM"),
        branch=_get(env, "CIRCLE_BRANCH"),
        commit=_get(env, "CIRCLE_SHA1"),
        pull_request=_pr_number(_get(env, "CIRCLE_PR_NUMBER", "CIRCLE_PULL_REQUEST")),
        build_url=_get(env, "CIRCLE_BUILD_URL"),
        shard_index=index,
        shard_total=total,
    )


def _gitlab(env: Mapping[str, str]) -> CiInfo:
    index, total = _shard(env.get("CI_NODE_INDEX"), env.get("CI_NODE_TOTAL"), base=1)
    return CiInfo(
        provider="gitlab",
        build_id=_get(env, "CI_PIPELINE_ID"),
        job_id=_get(env, "CI_JOB_ID"),
        branch=_get(
            env, "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "CI_COMMIT_BRANCH", "CI_COMMIT_REF_NAME"
        ),
        commit=_get(env, "CI_COMMIT_SHA"),
        pull_request=_get(env, "CI_MERGE_REQUEST_IID"),
        build_url=_get(env, "CI_PIPELINE_URL", "CI_JOB_URL"),
        shard_index=index,
        shard_total=total,
    )


def _jenkins(env: Mapping[str, str]) -> CiInfo:
    branch = _get(env, "CHANGE_BRANCH", "BRANCH_NAME", "GIT_BRANCH")
    if branch and branch.startswith("origin/"):
        branch = branch.removeprefix("origin/")
    return CiInfo(
        provider="jenkins",
        build_id=_get(env, "BUILD_TAG", "BUILD_NUMBER", "BUILD_ID"),
        job_id=_get(env, "JOB_NAME"),
        branch=branch,
        commit=_get(env, "GIT_COMMIT"),
        pull_request=_get(env, "CHANGE_ID"),
        build_url=_get(env, "BUILD_URL"),
    )


def _generic(env: Mapping[str, str]) -> CiInfo:
    return CiInfo(provider="generic")


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


#: (provider test, reader), first match wins; the generic ``CI`` comes last.
PROVIDERS: Final[
    tuple[tuple[Callable[[Mapping[str, str]], bool], Callable[[Mapping[str, str]], CiInfo]], ...]
] = (
    (lambda env: _is_true(env.get("BUILDKITE")), _buildkite),
    (lambda env: _is_true(env.get("GITHUB_ACTIONS")), _github),
    (lambda env: _is_true(env.get("CIRCLECI")), _circleci),
    (lambda env: _is_true(env.get("GITLAB_CI")), _gitlab),
    (lambda env: bool(_get(env, "JENKINS_URL")), _jenkins),
    (lambda env: _is_true(env.get("CI")), _generic),
)


def detect(environ: Mapping[str, str]) -> CiInfo:
    """The CI this process runs in, read from ``environ``; :data:`NOT_CI` outside CI."""
    for matches, read in PROVIDERS:
        if matches(environ):
            return read(environ)
    return NOT_CI
