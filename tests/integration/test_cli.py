"""The command line: verbs, summaries, JSON output, exit codes and messages without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from projections.generator import Noise, generate
from tests.helpers import Database, cli, ev, write_log

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample.ndjson"


def _log(tmp: Path, events: int = 600, seed: int = 3) -> Path:
    path = tmp / "cli.ndjson"
    path.write_bytes(b"".join(generate(events, seed=seed, noise=Noise.default())))
    return path


def _json(stdout: str) -> dict[str, object]:
    return json.loads(stdout)  # type: ignore[no-any-return]


def test_rebuild_prints_a_summary_that_matches_the_tables(database: Database) -> None:
    """rebuild --json reports counters that add up and a position at the log's last line."""
    log = _log(database.tmp)
    done = cli("rebuild", "--source", str(log), "--database-url", database.url_text, "--json")
    assert done.returncode == 0, done.stderr
    summary = _json(done.stdout)
    parts = ("applied", "noop", "duplicate", "stale", "unknown", "quarantined", "rejected")
    assert summary["read"] == sum(summary[k] for k in parts)  # type: ignore[misc]
    assert summary["read"] == len([x for x in log.read_bytes().split(b"\n") if x.strip()])
    assert summary["position"] == log.read_bytes().count(b"\n")
    assert summary["quarantined"] == database.count("quarantined_events")


def test_text_summary_is_one_line(database: Database) -> None:
    """Without --json, rebuild prints one summary line naming every counter."""
    log = _log(database.tmp, 200)
    done = cli("rebuild", "--source", str(log), "--database-url", database.url_text)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    words = ("applied", "duplicate", "stale", "unknown", "quarantined", "anomalies", "position")
    for word in words:
        assert word in lines[0]


def test_run_again_applies_nothing(database: Database) -> None:
    """A second run over an unchanged log reads nothing."""
    log = _log(database.tmp, 300)
    first = cli("run", "--source", str(log), "--database-url", database.url_text, "--json")
    assert first.returncode == 0, first.stderr
    again = cli("run", "--source", str(log), "--database-url", database.url_text, "--json")
    assert again.returncode == 0, again.stderr
    summary = _json(again.stdout)
    assert summary["read"] == 0
    assert summary["applied"] == 0
    assert summary["position"] == _json(first.stdout)["position"]


def test_status_json_reports_checkpoints_and_counts(database: Database) -> None:
    """status --json shows each projector's position and the real row counts."""
    log = _log(database.tmp, 300)
    assert cli("rebuild", "--source", str(log), "--database-url", database.url_text).returncode == 0
    done = cli("status", "--database-url", database.url_text, "--json")
    assert done.returncode == 0, done.stderr
    status = _json(done.stdout)
    positions = {p["projector"]: p["position"] for p in status["projectors"]}  # type: ignore[attr-defined]
    assert set(positions) == {"customers", "contacts", "providers", "channels", "conversations"}
    assert set(positions.values()) == {log.read_bytes().count(b"\n")}
    assert status["tables"]["conversations"] == database.count("conversations")  # type: ignore[index]
    assert status["quarantined"]["total"] == database.count("quarantined_events")  # type: ignore[index]
    assert status["anomalies"]["total"] == database.count("event_anomalies")  # type: ignore[index]


def test_run_migrates_an_empty_database_first(blank_database: Database) -> None:
    """run on a database without schema creates it, then projects."""
    log = write_log(blank_database.tmp / "one.ndjson", [ev("CustomerCreated", "cus_9", name="N")])
    done = cli("run", "--source", str(log), "--database-url", blank_database.url_text)
    assert done.returncode == 0, done.stderr
    assert blank_database.row("customers", "cus_9") is not None


def test_migrate_reports_the_revision(blank_database: Database) -> None:
    """migrate upgrades an empty database and says so; a second call says it is current."""
    first = cli("migrate", "--database-url", blank_database.url_text)
    assert first.returncode == 0, first.stderr
    assert "upgraded" in first.stdout
    second = cli("migrate", "--database-url", blank_database.url_text)
    assert second.returncode == 0
    assert "already" in second.stdout


def test_check_lists_invalid_lines_and_writes_nothing(tmp_path: Path) -> None:
    """check --json counts events per name and lists each invalid line with its reason."""
    log = write_log(
        tmp_path / "c.ndjson",
        [
            ev("CustomerCreated", "cus_1", name="A"),
            "{not json",
            ev("CustomerUpdated", "cus_1", 2, changed_fields={"name": "B"}),
            '{"event_name": "InvoiceIssued", "event_id": "x1", "aggregate_type": "Invoice", '
            '"aggregate_id": "i1", "occurred_at": "2025-01-01T00:00:00Z", "actor": "a", '
            '"version": 1}',
        ],
    )
    done = cli("check", "--source", str(log), "--json", cwd=tmp_path)
    assert done.returncode == 1
    report = _json(done.stdout)
    assert report["events"] == {"CustomerCreated": 1, "CustomerUpdated": 1}
    assert report["unknown"] == {"InvoiceIssued": 1}
    assert report["invalid"][0]["line"] == 2  # type: ignore[index]
    assert report["invalid"][0]["reason"] == "invalid_json"  # type: ignore[index]
    assert not (tmp_path / "projections.db").exists()


def test_check_of_a_clean_log_exits_zero(tmp_path: Path) -> None:
    """A log without invalid lines passes check with exit code 0."""
    log = write_log(tmp_path / "ok.ndjson", [ev("CustomerCreated", "cus_1", name="A")])
    done = cli("check", "--source", str(log))
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_says_when_a_log_needs_version_mode_none(tmp_path: Path) -> None:
    """Versions that repeat within most aggregates make check recommend --version-mode none."""
    events = []
    for n in range(20):
        events.append(ev("CustomerCreated", f"cus_{n}", 1, name="A"))
        events.append(ev("CustomerUpdated", f"cus_{n}", 1, changed_fields={"name": "B"}))
    log = write_log(tmp_path / "schema-versions.ndjson", events)
    report = _json(cli("check", "--source", str(log), "--json").stdout)
    assert report["recommended_version_mode"] == "none"
    text = cli("check", "--source", str(log)).stdout
    assert "--version-mode none" in text


def test_check_keeps_sequence_mode_for_the_odd_stale_event(tmp_path: Path) -> None:
    """A sequence log with one stale re-delivery still fits the default mode."""
    events = []
    for n in range(20):
        events.append(ev("CustomerCreated", f"cus_{n}", 1, name="A"))
        events.append(ev("CustomerUpdated", f"cus_{n}", 2, changed_fields={"name": "B"}))
    events.append(ev("CustomerUpdated", "cus_3", 1, changed_fields={"name": "C"}))
    log = write_log(tmp_path / "sequence.ndjson", events)
    report = _json(cli("check", "--source", str(log), "--json").stdout)
    assert report["version_repeats"] == 1
    assert report["recommended_version_mode"] == "sequence"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--source", "missing.ndjson"], "not found"),
        (["run", "--source", "events.csv"], "neither"),
        (["run", "--source", "x.ndjson", "--database-url", "mysql://h/db"], "unsupported"),
        (["run", "--source", "x.ndjson", "--database-url", "::nonsense"], "URL"),
        (["run", "--source", "x.ndjson", "--batch-size", "0"], "batch-size"),
        (["run", "--source", "x.ndjson", "--version-mode", "maybe"], "version-mode"),
    ],
    ids=["missing-file", "not-ndjson", "unsupported-db", "bad-url", "zero-batch", "bad-mode"],
)
def test_bad_usage_exits_2_without_traceback(tmp_path: Path, args: list[str], needle: str) -> None:
    """Bad flags, URLs and paths give exit code 2 and a one-line reason."""
    (tmp_path / "x.ndjson").write_bytes(b"")
    (tmp_path / "events.csv").write_bytes(b"")
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert needle in done.stderr


def test_unreachable_database_exits_1_with_a_message(tmp_path: Path) -> None:
    """A PostgreSQL server that does not answer gives exit code 1 and a clear message."""
    log = write_log(tmp_path / "l.ndjson", [ev("CustomerCreated", "cus_1", name="A")])
    done = cli(
        "run", "--source", str(log), "--database-url", "postgresql://nobody@127.0.0.1:1/none"
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "cannot use database" in done.stderr


def test_default_database_is_a_sqlite_file_in_the_working_folder(tmp_path: Path) -> None:
    """Without --database-url or the environment variable, projections.db is created here."""
    log = write_log(tmp_path / "l.ndjson", [ev("CustomerCreated", "cus_1", name="A")])
    env = {"PROJECTIONS_DATABASE_URL": ""}
    done = cli("rebuild", "--source", str(log), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "projections.db").exists()


def test_environment_variable_names_the_database(tmp_path: Path) -> None:
    """PROJECTIONS_DATABASE_URL is used when no flag is given."""
    log = write_log(tmp_path / "l.ndjson", [ev("CustomerCreated", "cus_1", name="A")])
    target = tmp_path / "elsewhere.db"
    done = cli(
        "rebuild",
        "--source",
        str(log),
        cwd=tmp_path,
        env={"PROJECTIONS_DATABASE_URL": f"sqlite:///{target}"},
    )
    assert done.returncode == 0, done.stderr
    assert target.exists()
    assert not (tmp_path / "projections.db").exists()


def test_sample_log_exercises_every_counter(tmp_path: Path) -> None:
    """The shipped sample shows every counter of the summary above zero."""
    done = cli("rebuild", "--source", str(SAMPLE), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = _json(done.stdout)
    for counter in (
        "applied",
        "noop",
        "duplicate",
        "stale",
        "unknown",
        "quarantined",
        "rejected",
        "anomalies",
    ):
        assert summary[counter] > 0, counter  # type: ignore[operator]


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("PROJECTIONS_COMMIT_SECONDS", "soon", "number of seconds"),
        ("PROJECTIONS_COMMIT_SECONDS", "-1", "0 or more"),
        ("PROJECTIONS_COMMIT_SECONDS", "nan", "0 or more"),
        ("PROJECTIONS_RESIDENT_ROWS", "0", "at least 1"),
    ],
)
def test_bad_commit_settings_exit_2(tmp_path: Path, variable: str, value: str, needle: str) -> None:
    """The transaction and memory settings are checked before anything is read."""
    log = write_log(tmp_path / "x.ndjson", [ev("CustomerCreated", "cus_1", name="A")])
    done = cli("run", "--source", str(log), cwd=tmp_path, env={variable: value})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert variable in done.stderr and needle in done.stderr
    assert not (tmp_path / "projections.db").exists()
