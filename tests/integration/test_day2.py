"""Day-2 operations (ops.py, the CLI's status/jobs/retry/search) on the local stack."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from batch_embedder_local import ops
from tests.utils import SAMPLES, fresh

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def day2(stack: Any) -> dict[str, Any]:
    """One good and one bad (empty) file, each its own named execution, both finished."""
    salt = uuid.uuid4().hex[:10]
    good_key, bad_key = f"day2/{salt}/appetite.rst.txt", f"day2/{salt}/broken.txt"
    good = stack.upload(good_key, fresh("appetite.rst.txt", salt), deliver=False)
    bad = stack.upload(bad_key, b"", deliver=False)
    jobs = {"good": f"day2-good-{salt}", "bad": f"day2-bad-{salt}"}
    arns = {
        stack.start_execution([good], name=jobs["good"]): good_key,
        stack.start_execution([bad], name=jobs["bad"]): bad_key,
    }
    results = stack.wait(arns, timeout=300)
    assert [r.status for r in results] == ["SUCCEEDED", "FAILED"]
    return {"salt": salt, "good_key": good_key, "bad_key": bad_key, "jobs": jobs}


def test_status_shows_the_executions_and_the_budget(stack: Any, day2: dict[str, Any]) -> None:
    res = ops.resources_from_local(stack)
    data = ops.status(res, scan_jobs=True)
    assert data["executions"]["SUCCEEDED"] >= 1 and data["executions"]["FAILED"] >= 1
    assert {q["queue"].rsplit("-", 1)[-1] for q in data["queues"]} == {
        "UploadQueue",
        "UploadDeadLetterQueue",
    }
    assert data["budget"]["committed_tokens"] > 0
    assert data["jobs"]["FAILED"] >= 1 and data["jobs"]["SUCCEEDED"] >= 1
    assert "executions: RUNNING" in ops.render_status(data)


def test_jobs_failed_lists_the_bad_file_with_its_cause(stack: Any, day2: dict[str, Any]) -> None:
    res = ops.resources_from_local(stack)
    failed = {j.job_id: j for j in ops.list_jobs(res, "failed", limit=100)}
    bad = failed[day2["jobs"]["bad"]]
    assert bad.keys == [day2["bad_key"]]
    assert bad.failed_state == "InvalidDocument"
    assert day2["bad_key"] in bad.cause and "empty" in bad.cause
    assert day2["jobs"]["good"] not in failed
    assert "InvalidDocument" in ops.render_jobs([bad])
    # Offline (no Step Functions), the jobs table tells the same.
    offline = ops.Resources(jobs_table=res.jobs_table, usage_table=res.usage_table, model="m")
    table = {j.job_id: j for j in ops.list_jobs(offline, "failed", limit=1000)}
    assert table[day2["jobs"]["bad"]].failed_state == "InvalidDocument"
    assert table[day2["jobs"]["bad"]].keys == [day2["bad_key"]]
    with pytest.raises(ops.OpsError):
        ops.list_jobs(offline, "running")


def test_retry_fails_again_then_succeeds_once_the_file_is_fixed(
    stack: Any, day2: dict[str, Any]
) -> None:
    res = ops.resources_from_local(stack)
    job = day2["jobs"]["bad"]
    again = ops.retry(res, job)
    assert again["retry"] == f"{job}-retry-1"
    (result,) = stack.wait({again["execution_arn"]: day2["bad_key"]}, timeout=300)
    assert (result.status, result.failed_state) == ("FAILED", "InvalidDocument")

    stack.upload(day2["bad_key"], fresh("whatnow.rst.txt", day2["salt"]), deliver=False)
    fixed = ops.retry(res, again["retry"], latest=True)
    assert fixed["retry"] == f"{job}-retry-2"
    (result,) = stack.wait({fixed["execution_arn"]: day2["bad_key"]}, timeout=300)
    assert result.status == "SUCCEEDED", (result.failed_state, result.cause)
    assert result.output["documents"] == 1

    with pytest.raises(ops.OpsError):
        ops.retry(res, f"no-such-job-{day2['salt']}")


def test_search_finds_the_good_document(stack: Any, day2: dict[str, Any]) -> None:
    res = ops.resources_from_local(stack)
    text = (SAMPLES / "appetite.rst.txt").read_text(encoding="utf-8")
    query = f"[{day2['salt']}] " + text.split("\n\n")[2]
    hits = ops.search_stack(res, query, k=3, prefix=f"day2/{day2['salt']}/")
    assert [hit.key for hit in hits] == [day2["good_key"]] * len(hits) and hits
    assert not ops.search_stack(res, query, k=3, prefix=f"day2/{day2['salt']}/none/")
