"""CI detection from an environment mapping."""

from __future__ import annotations

import pytest

from pytest_testengine.ci import NOT_CI, CiInfo, detect

BUILDKITE = {
    "BUILDKITE": "true",
    "BUILDKITE_BUILD_ID": "0190-build",
    "BUILDKITE_JOB_ID": "0190-job",
    "BUILDKITE_BRANCH": "feature/x",
    "BUILDKITE_COMMIT": "abc123",
    "BUILDKITE_PULL_REQUEST": "42",
    "BUILDKITE_BUILD_URL": "https://buildkite.com/org/p/builds/7",
    "BUILDKITE_PARALLEL_JOB": "2",
    "BUILDKITE_PARALLEL_JOB_COUNT": "4",
}
GITHUB = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_RUN_ID": "9001",
    "GITHUB_JOB": "tests",
    "GITHUB_REF": "refs/pull/17/merge",
    "GITHUB_REF_NAME": "17/merge",
    "GITHUB_HEAD_REF": "feature/y",
    "GITHUB_SHA": "def456",
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_REPOSITORY": "org/repo",
}
CIRCLE = {
    "CIRCLECI": "true",
    "CIRCLE_WORKFLOW_ID": "wf-1",
    "CIRCLE_BUILD_NUM": "55",
    "CIRCLE_BRANCH": "main",
    "CIRCLE_SHA1": "789abc",
    "CIRCLE_PULL_REQUEST": "https://github.com/org/repo/pull/8",
    "CIRCLE_BUILD_URL": "https://circleci.com/gh/org/repo/55",
    "CIRCLE_NODE_INDEX": "0",
    "CIRCLE_NODE_TOTAL": "3",
}
GITLAB = {
    "GITLAB_CI": "true",
    "CI": "true",
    "CI_PIPELINE_ID": "300",
    "CI_JOB_ID": "301",
    "CI_COMMIT_REF_NAME": "develop",
    "CI_COMMIT_SHA": "fedcba",
    "CI_MERGE_REQUEST_IID": "12",
    "CI_PIPELINE_URL": "https://gitlab.com/org/repo/-/pipelines/300",
    "CI_NODE_INDEX": "1",
    "CI_NODE_TOTAL": "2",
}
JENKINS = {
    "JENKINS_URL": "https://jenkins.example/",
    "BUILD_TAG": "jenkins-proj-12",
    "BUILD_NUMBER": "12",
    "JOB_NAME": "proj",
    "GIT_BRANCH": "origin/release",
    "GIT_COMMIT": "1234ab",
    "BUILD_URL": "https://jenkins.example/job/proj/12/",
}


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, NOT_CI, id="not-ci"),
        pytest.param({"CI": "false"}, NOT_CI, id="ci-false"),
        pytest.param({"CI": "true"}, CiInfo(provider="generic"), id="generic"),
        pytest.param({"CI": "1"}, CiInfo(provider="generic"), id="generic-1"),
        pytest.param(
            BUILDKITE,
            CiInfo(
                provider="buildkite",
                build_id="0190-build",
                job_id="0190-job",
                branch="feature/x",
                commit="abc123",
                pull_request="42",
                build_url="https://buildkite.com/org/p/builds/7",
                shard_index=2,
                shard_total=4,
            ),
            id="buildkite",
        ),
        pytest.param(
            GITHUB,
            CiInfo(
                provider="github_actions",
                build_id="9001",
                job_id="tests",
                branch="feature/y",
                commit="def456",
                pull_request="17",
                build_url="https://github.com/org/repo/actions/runs/9001",
            ),
            id="github-pull-request",
        ),
        pytest.param(
            CIRCLE,
            CiInfo(
                provider="circleci",
                build_id="wf-1",
                job_id="55",
                branch="main",
                commit="789abc",
                pull_request="8",
                build_url="https://circleci.com/gh/org/repo/55",
                shard_index=0,
                shard_total=3,
            ),
            id="circleci",
        ),
        pytest.param(
            GITLAB,
            CiInfo(
                provider="gitlab",
                build_id="300",
                job_id="301",
                branch="develop",
                commit="fedcba",
                pull_request="12",
                build_url="https://gitlab.com/org/repo/-/pipelines/300",
                shard_index=0,
                shard_total=2,
            ),
            id="gitlab-1-based-index",
        ),
        pytest.param(
            JENKINS,
            CiInfo(
                provider="jenkins",
                build_id="jenkins-proj-12",
                job_id="proj",
                branch="release",
                commit="1234ab",
                build_url="https://jenkins.example/job/proj/12/",
            ),
            id="jenkins",
        ),
    ],
)
def test_detect(environ: dict[str, str], expected: CiInfo) -> None:
    assert detect(environ) == expected


def test_github_push_has_no_pull_request_and_uses_the_ref_name() -> None:
    env = {
        **GITHUB,
        "GITHUB_REF": "refs/heads/main",
        "GITHUB_REF_NAME": "main",
        "GITHUB_HEAD_REF": "",
    }
    info = detect(env)
    assert (info.branch, info.pull_request) == ("main", None)


def test_buildkite_without_a_pull_request_says_false() -> None:
    assert detect({**BUILDKITE, "BUILDKITE_PULL_REQUEST": "false"}).pull_request is None


@pytest.mark.parametrize(
    ("index", "total"),
    [
        pytest.param("4", "4", id="index-equals-total"),
        pytest.param("-1", "4", id="negative"),
        pytest.param("x", "4", id="not-a-number"),
        pytest.param("0", "0", id="zero-total"),
        pytest.param("", "4", id="empty"),
        pytest.param("1", None, id="no-total"),
    ],
)
def test_malformed_shard_variables_are_ignored(index: str, total: str | None) -> None:
    env = {**BUILDKITE, "BUILDKITE_PARALLEL_JOB": index}
    if total is None:
        del env["BUILDKITE_PARALLEL_JOB_COUNT"]
    else:
        env["BUILDKITE_PARALLEL_JOB_COUNT"] = total
    info = detect(env)
    assert (info.shard_index, info.shard_total) == (None, None)
    assert info.provider == "buildkite"


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        pytest.param("1", 0, id="first"),
        pytest.param("2", 1, id="last"),
        pytest.param("0", None, id="zero"),
    ],
)
def test_gitlab_node_index_is_1_based(index: str, expected: int | None) -> None:
    assert detect({**GITLAB, "CI_NODE_INDEX": index}).shard_index == expected


def test_a_specific_provider_wins_over_the_generic_ci_variable() -> None:
    assert detect({**GITLAB, "CI": "true"}).provider == "gitlab"
    assert detect({"CI": "true", "GITHUB_ACTIONS": "true"}).provider == "github_actions"


def test_empty_values_are_none() -> None:
    info = detect({"BUILDKITE": "true", "BUILDKITE_BRANCH": "  ", "BUILDKITE_COMMIT": ""})
    assert info == CiInfo(provider="buildkite")
