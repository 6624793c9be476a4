"""Alarms, the database option and the parameter table of template.yaml."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from batch_embedder.settings import Settings
from batch_embedder_local.template import Resolver, load_template, parameter_defaults
from tests.utils import ROOT

ALARMS = {
    "FailedExecutionsAlarm",
    "DeadLetterQueueAlarm",
    "BudgetAlarm",
    "ReconcilerErrorsAlarm",
    "WebhookSignatureAlarm",
    "ProviderDegradedAlarm",
}


def resolver(**parameters: str) -> Resolver:
    template = load_template()
    return Resolver(template, {**parameter_defaults(template), **parameters}, {}, {}, {})


def test_every_alarm_notifies_the_topic() -> None:
    resources = load_template()["Resources"]
    alarms = {n for n, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert alarms == ALARMS
    for name in alarms:
        assert resources[name]["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
    subscription = resources["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert not resolver().condition("HasAlarmEmail")
    assert resolver(AlarmEmail="ops@example.com").condition("HasAlarmEmail")
    dlq = resources["DeadLetterQueueAlarm"]["Properties"]["Dimensions"][0]["Value"]
    assert dlq == {"Fn::GetAtt": ["UploadDeadLetterQueue", "QueueName"]}


def test_state_machine_logs_errors_and_the_dashboard_shows_failures_and_cost() -> None:
    resources = load_template()["Resources"]
    logging = resources["EmbedUploadsStateMachine"]["Properties"]["Logging"]
    assert logging["Level"] == "ERROR"
    assert "StateMachineLogGroup" in json.dumps(logging)
    # The log-delivery actions are the only "*" of the state machine's role.
    for policy in resources["EmbedUploadsStateMachine"]["Properties"]["Policies"]:
        if '"*"' in json.dumps(policy):
            actions = [a for st in policy["Statement"] for a in st["Action"]]
            assert all(a.startswith("logs:") for a in actions), actions
    body = json.dumps(resources["Dashboard"]["Properties"]["DashboardBody"])
    for metric in ("ExecutionsFailed", "batches_in_flight", "cost_usd", "aws_cost_usd"):
        assert metric in body, metric


def function_variables() -> dict[str, Any]:
    """Every function's ``Environment`` variables together (each sets its own)."""
    env: dict[str, Any] = {}
    for res in load_template()["Resources"].values():
        if res["Type"] == "AWS::Serverless::Function":
            env.update(res["Properties"].get("Environment", {}).get("Variables", {}))
    return env


@pytest.mark.parametrize(
    ("tier", "overrides", "expected"),
    [
        ("1", {}, ("3000", "1000000", "3000000")),
        ("3", {}, ("5000", "5000000", "100000000")),
        ("1", {"EmbeddingsTokensPerMinute": "1234"}, ("3000", "1234", "3000000")),
    ],
)
def test_openai_tier_sets_the_rate_limits_unless_overridden(
    tier: str, overrides: dict[str, str], expected: tuple[str, str, str]
) -> None:
    env = function_variables()
    r = resolver(OpenAITier=tier, **overrides)
    names = ("EMBEDDINGS_REQUESTS_PER_MINUTE", "EMBEDDINGS_TOKENS_PER_MINUTE")
    got = tuple(str(r.resolve(env[n])) for n in (*names, "BATCH_ENQUEUED_TOKEN_CAP"))
    assert got == expected


def test_every_env_only_setting_users_change_is_a_parameter() -> None:
    env = function_variables()
    for name in ("BATCH_INPUTS_PER_REQUEST", "OPENAI_MAX_RETRIES", "RATE_LIMIT_MAX_WAIT_SECONDS",
                 "PRICE_OVERRIDES", "PREFIX_TOKEN_LIMITS"):  # fmt: skip
        assert name in env, name
    parameters = load_template()["Parameters"]
    assert all(spec.get("Description") for spec in parameters.values())


def test_list_settings_take_comma_lists_and_still_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFIX_TOKEN_LIMITS", "tenant-a/=1000000,tenant-b/=500")
    monkeypatch.setenv("PRICE_OVERRIDES", "my-model=1:0.5")
    assert Settings().prefix_token_limits == {"tenant-a/": 1_000_000, "tenant-b/": 500}
    monkeypatch.setenv("PREFIX_TOKEN_LIMITS", '{"tenant-a/": 10}')
    monkeypatch.setenv("PRICE_OVERRIDES", '{"my-model": {"standard": 1, "batch": 0.5}}')
    assert Settings().prefix_token_limits == {"tenant-a/": 10}
    monkeypatch.setenv("PREFIX_TOKEN_LIMITS", "tenant-a/=many")
    with pytest.raises(ValueError, match="tenant-a/=many"):
        Settings()
    monkeypatch.setenv("PREFIX_TOKEN_LIMITS", "")
    monkeypatch.setenv("PRICE_OVERRIDES", "my-model=1")
    with pytest.raises(ValueError, match="my-model=1"):
        Settings()


def test_database_resources_exist_only_with_create_database() -> None:
    template = load_template()
    resources = template["Resources"]
    for kind in ("AWS::RDS::DBCluster", "AWS::RDS::DBProxy", "AWS::EC2::VPCEndpoint"):
        found = [r for r in resources.values() if r["Type"] == kind]
        assert found and all(r["Condition"] == "CreateDatabase" for r in found), kind
    cluster = resources["DatabaseCluster"]["Properties"]
    assert cluster["Engine"] == "aurora-postgresql"
    assert str(cluster["EngineVersion"]).startswith("16.")
    assert cluster["ServerlessV2ScalingConfiguration"]["MinCapacity"] == 0
    assert not resolver().condition("CreateDatabase")
    url = resources["DatabaseUrlSecret"]["Properties"]["SecretString"]
    assert resolver().resolve(url) == "REPLACE_ME"
    assert "DatabaseProxy.Endpoint" in json.dumps(url)
    migration = resources["DatabaseMigration"]["Properties"]
    assert migration["Layer"] == {"Ref": "BatchEmbedderLayer"}  # re-runs when migrations change


@pytest.mark.parametrize("doc", ["docs/deploy.md", "README.md"])
def test_parameter_tables_are_current(doc: str) -> None:
    proc = subprocess.run(
        [sys.executable, "scripts/parameters_table.py", "--check", doc],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_parameter_table_check_notices_a_stale_table(tmp_path: Path) -> None:
    stale = tmp_path / "deploy.md"
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    stale.write_text(text.replace("| `OpenAITier` |", "| `OpenAiTier` |"), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "scripts/parameters_table.py", "--check", str(stale)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "out of date" in proc.stderr


class _Answers(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_PUT(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def response_url() -> Iterator[str]:
    _Answers.received = []
    server = HTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/answer"
    server.shutdown()


class _Context:
    def get_remaining_time_in_millis(self) -> int:
        return 120_000


def _migration_function() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "migrate_database_app", ROOT / "functions" / "migrate_database" / "app.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_migration_custom_resource_migrates_and_answers(
    database_url: str, response_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    app = _migration_function()
    event = {"StackId": "s", "RequestId": "r", "LogicalResourceId": "DatabaseMigration",
             "ResponseURL": response_url}  # fmt: skip
    app.lambda_handler({**event, "RequestType": "Create"}, _Context())
    app.lambda_handler({**event, "RequestType": "Update", "PhysicalResourceId": "x"}, _Context())
    app.lambda_handler({**event, "RequestType": "Delete", "PhysicalResourceId": "x"}, _Context())
    created, updated, deleted = _Answers.received
    assert created["Status"] == "SUCCESS" and created["Data"]["SchemaVersion"] >= 1
    assert updated["Status"] == "SUCCESS" and updated["PhysicalResourceId"] == "x"
    assert deleted["Status"] == "SUCCESS"
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setattr(app, "RETRY_SECONDS", 0)
    monkeypatch.setattr(app, "ANSWER_MARGIN_SECONDS", 119)  # no time left to retry
    app.lambda_handler({**event, "RequestType": "Create"}, _Context())
    assert _Answers.received[-1]["Status"] == "FAILED"


def test_the_where_things_live_map_matches_the_tree(tmp_path: Path) -> None:
    check = [sys.executable, "scripts/where_things_live.py", "--check"]
    doc = ROOT / "docs" / "architecture.md"
    proc = subprocess.run([*check, str(doc)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    # A module the map does not list makes it stale.
    stale = tmp_path / "architecture.md"
    text = doc.read_text(encoding="utf-8")
    stale.write_text(text.replace("| `layers/batch_embedder/batch_embedder/handler.py` |", "|"))
    proc = subprocess.run([*check, str(stale)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and "stale" in proc.stdout
