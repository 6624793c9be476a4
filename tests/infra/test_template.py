"""template.yaml and the ASL file: linters, our own ASL reference check, least privilege."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batch_embedder.settings import (
    ChunkingSettings,
    DatabaseSettings,
    Mixins,
    Settings,
    variables,
)
from batch_embedder_local.asl_check import check_file, check_states, check_template
from batch_embedder_local.template import load_template
from tests.utils import ROOT

ASL = ROOT / "statemachine" / "embed_uploads.asl.json"
STATE_MACHINE = "EmbedUploadsStateMachine"


def tool(name: str) -> str:
    """The tool from the project's tool venv (.tools, made by `make tools`) or PATH."""
    for candidate in (ROOT / ".tools" / "bin" / name, Path(sys.prefix) / "bin" / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run `make tools`")
    return found


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


TEMPLATE = ROOT / "template.yaml"
CREATE_DATABASE_DEFAULT = '''  CreateDatabase:
    Type: String
    Default: "false"'''


@pytest.fixture(scope="module")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of template.yaml in a tmp dir with CreateDatabase's default flipped to "true"."""
    text = TEMPLATE.read_text(encoding="utf-8")
    assert text.count(CREATE_DATABASE_DEFAULT) == 1
    flipped = CREATE_DATABASE_DEFAULT.replace('"false"', '"true"')
    text = text.replace(CREATE_DATABASE_DEFAULT, flipped)
    path = tmp_path_factory.mktemp("template") / "template.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("variant", ["default", "create-database"])
def test_sam_validate_lint(variant: str, request: pytest.FixtureRequest) -> None:
    path = TEMPLATE if variant == "default" else request.getfixturevalue("database_template")
    proc = run(tool("sam"), "validate", "--lint", "--region", "us-east-1", "-t", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is a valid SAM Template" in proc.stdout + proc.stderr


@pytest.mark.parametrize("variant", ["default", "create-database"])
def test_cfn_lint(variant: str, request: pytest.FixtureRequest) -> None:
    path = TEMPLATE if variant == "default" else request.getfixturevalue("database_template")
    proc = run(tool("cfn-lint"), str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_asl_targets_exist_and_every_task_retries_and_catches() -> None:
    assert check_template() == []


def test_asl_check_catches_a_dangling_next(tmp_path: Path) -> None:
    machine = json.loads(ASL.read_text())
    machine["States"]["BudgetCheck"]["Next"] = "BuildAndUploadJsonI"  # a typo
    del machine["States"]["ChunkAndEstimate"]["Retry"]
    problems = check_states(machine)
    assert "BudgetCheck: target 'BuildAndUploadJsonI' is not a state" in problems
    assert "ChunkAndEstimate: Lambda Task without Retry" in problems
    broken = tmp_path / "broken.asl.json"
    text = json.dumps(machine)
    assert "${CreateBatchFunctionArn}" in text
    broken.write_text(text.replace("${CreateBatchFunctionArn}", "${CreateBatchFnArn}"))
    subs = set(load_template()["Resources"][STATE_MACHINE]["Properties"]["DefinitionSubstitutions"])
    found = check_file(broken, subs)
    assert "${CreateBatchFnArn} has no DefinitionSubstitutions entry" in found
    assert "substitution CreateBatchFunctionArn is never used" in found


def test_the_state_machine_is_the_groups_workflow_started_by_the_pipe() -> None:
    resources = load_template()["Resources"]
    machine = resources[STATE_MACHINE]
    assert machine["Type"] == "AWS::Serverless::StateMachine"
    assert machine["Properties"]["DefinitionUri"] == "statemachine/embed_uploads.asl.json"
    assert check_file(ASL, set(machine["Properties"]["DefinitionSubstitutions"])) == []
    states = json.loads(ASL.read_text())["States"]
    # The group's wait is a task token: no polling loop, no per-batch Wait state.
    wait = states["WaitForBatches"]
    assert wait["Resource"].endswith(".waitForTaskToken")
    assert not any(s["Type"] == "Wait" and "Batch" in n and n != "WaitForBatchQueue"
                   for n, s in states.items())  # fmt: skip
    assert {"PollBatch", "DeleteDocument", "UploadOrDelete"}.isdisjoint(states)
    assert "SyncMaxTokens" not in load_template()["Parameters"]
    pipe = json.dumps(resources["UploadPipe"]["Properties"])
    assert STATE_MACHINE in pipe


def test_every_fail_state_is_named_for_users() -> None:
    states = json.loads(ASL.read_text())["States"]
    fails = {n for n, s in states.items() if s["Type"] == "Fail"}
    assert {"InvalidDocument", "BudgetExceeded", "BatchFailed", "BatchExpired", "BatchCancelled",
            "EmbeddingsIncomplete", "PipelineError"} <= fails  # fmt: skip


def test_functions_have_least_privilege_policies() -> None:
    resources = load_template()["Resources"]
    functions = {k: v for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}
    assert set(functions) == {
        "ChunkAndEstimateFunction", "CheckCacheFunction", "BudgetCheckFunction",
        "BuildAndUploadJsonlFunction", "CreateBatchFunction", "EmbedSyncFunction",
        "DeleteDocumentsFunction", "FetchAndWriteFunction", "RecordCostFunction",
        "RecordFailureFunction", "SweepReservationsFunction", "WaitForBatchesFunction",
        "WebhookReceiverFunction", "ReconcileBatchesFunction", "MigrateDatabaseFunction",
    }  # fmt: skip
    for name, fn in functions.items():
        policies = fn["Properties"].get("Policies", [])
        # The task-token actions (states:SendTask*) support no resource-level permission:
        # the one statement that may name "*".
        scoped = [p for p in policies if not _task_token_statement(p)]
        text = json.dumps(scoped)
        assert "FullAccess" not in text and '"*"' not in text, name
        assert "DynamoDBCrudPolicy" not in text and "S3CrudPolicy" not in text, name
    # Only the functions that talk to Postgres (the content store) read the database
    # secret, and each of them runs in the VPC when one is given.
    readers = {n for n, fn in functions.items() if "DatabaseUrlSecret" in json.dumps(fn)}
    assert readers == {"ChunkAndEstimateFunction", "CheckCacheFunction", "FetchAndWriteFunction",
                       "DeleteDocumentsFunction",
                       "RecordFailureFunction", "EmbedSyncFunction", "SweepReservationsFunction",
                       "ReconcileBatchesFunction", "MigrateDatabaseFunction"}  # fmt: skip
    for name in readers:
        assert "VpcConfig" in functions[name]["Properties"], name
    # ... and has its concurrency capped by DatabaseConcurrency (not the one-off migration).
    for name in readers - {"MigrateDatabaseFunction"}:
        assert "DatabaseConcurrency" in json.dumps(
            functions[name]["Properties"]["ReservedConcurrentExecutions"]
        ), name


def _task_token_statement(policy: object) -> bool:
    """A policy made only of statements allowing ``states:SendTask*`` actions."""
    if not isinstance(policy, dict) or set(policy) != {"Statement"}:
        return False
    for statement in policy["Statement"]:
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if not actions or not all(a.startswith("states:SendTask") for a in actions):
            return False
    return True


def test_bucket_is_private_encrypted_tls_only_and_sends_events() -> None:
    resources = load_template()["Resources"]
    bucket = resources["DocumentsBucket"]["Properties"]
    assert bucket["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["BucketEncryption"]
    policy = json.dumps(resources["DocumentsBucketPolicy"]["Properties"])
    assert "aws:SecureTransport" in policy and '"Deny"' in policy


def _function_mixins(functions: dict[str, Any]) -> dict[str, Mixins]:
    """The settings mixins each function's ``app.py`` declares."""
    declared: dict[str, Mixins] = {}
    for logical, fn in functions.items():
        path = ROOT / fn["Properties"]["CodeUri"] / "app.py"
        spec = importlib.util.spec_from_file_location(f"_app_{logical}", path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        handler = getattr(module, "lambda_handler", None)
        declared[logical] = getattr(handler, "settings_mixins", None) or module.SETTINGS
    return declared


def environment_problems(template: dict[str, Any]) -> list[str]:
    """Where a function's ``Environment`` differs from its settings mixins: a variable of its
    mixins that the template sets for some function but not for it (it would silently read
    the default), or a settings variable it does not declare. Settings variables in Globals
    are problems too: every function would get them."""
    functions = {
        k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"
    }
    fields = {name.upper() for name in Settings.model_fields}
    shared = template["Globals"]["Function"].get("Environment", {}).get("Variables", {})
    problems = [f"Globals sets {name}" for name in sorted(fields & set(shared))]
    own = {
        k: set(v["Properties"].get("Environment", {}).get("Variables", {}))
        for k, v in functions.items()
    }
    configured = fields & set().union(*own.values())
    for logical, mixins in _function_mixins(functions).items():
        have = own[logical] & fields
        want = variables(mixins) & configured
        problems += [f"{logical} lacks {name}" for name in sorted(want - have)]
        problems += [f"{logical} sets {name} outside its mixins" for name in sorted(have - want)]
    return problems


def test_each_function_gets_exactly_the_variables_of_its_settings_mixins() -> None:
    template = load_template()
    assert environment_problems(template) == []
    # Each declares what it reads: the steps' reads are checked at run time by the scoped
    # settings (tests/unit/test_pricing_and_settings.py), on every local-stack test.
    mixins = _function_mixins(
        {k: v for k, v in template["Resources"].items() if v["Type"].endswith("::Function")}
    )
    assert mixins["MigrateDatabaseFunction"] == (DatabaseSettings,)
    assert ChunkingSettings in mixins["ChunkAndEstimateFunction"]
    assert all(
        ChunkingSettings not in m for k, m in mixins.items() if k != "ChunkAndEstimateFunction"
    )


def test_the_environment_check_notices_a_missing_and_an_extra_variable() -> None:
    template = copy.deepcopy(load_template())
    resources = template["Resources"]
    del resources["EmbedSyncFunction"]["Properties"]["Environment"]["Variables"]["EMBED_ROUNDS"]
    resources["WaitForBatchesFunction"]["Properties"]["Environment"]["Variables"][
        "CHUNK_TOKENS"
    ] = {"Ref": "ChunkTokens"}
    template["Globals"]["Function"]["Environment"]["Variables"]["SYNC_PREFIXES"] = ""
    assert environment_problems(template) == [
        "Globals sets SYNC_PREFIXES",
        "EmbedSyncFunction lacks EMBED_ROUNDS",
        "WaitForBatchesFunction sets CHUNK_TOKENS outside its mixins",
    ]
