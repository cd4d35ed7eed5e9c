"""Report files the user names (--json, --output) that cannot be written: exit 2, one line."""

from __future__ import annotations

from typer.testing import CliRunner

from autotrain.cli import app

runner = CliRunner()


def test_gradcheck_json_into_a_missing_folder_exits_2(tmp_path):
    target = tmp_path / "missing" / "report.json"
    r = runner.invoke(app, ["gradcheck", "--op", "add", "--json", str(target)])
    assert r.exit_code == 2, r.output
    assert "report.json" in r.output and "cannot write" in r.output
    assert not target.exists()


def test_gradcheck_json_is_written_with_one_entry_per_case(tmp_path):
    import json

    target = tmp_path / "report.json"
    r = runner.invoke(app, ["gradcheck", "--op", "add", "--json", str(target)])
    assert r.exit_code == 0, r.output
    cases = json.loads(target.read_text())["cases"]
    assert [c["name"] for c in cases] == ["add", "add_broadcast", "add_0d", "add_relu"]  # a prefix
    assert all(c["passed"] for c in cases)


def test_graph_into_a_missing_folder_exits_2(tmp_path):
    r = runner.invoke(app, ["graph", "-o", str(tmp_path / "missing" / "q.dot")])
    assert r.exit_code == 2, r.output
    assert "does not exist" in r.output


def test_graph_writes_the_tutorial_dag(tmp_path):
    target = tmp_path / "q.dot"
    r = runner.invoke(app, ["graph", "-o", str(target)])
    assert r.exit_code == 0, r.output
    dot = target.read_text()
    assert "SubBackward0" in dot and "PowBackward0" in dot and "MulBackward0" in dot
    assert dot.count("lightblue") == 2  # the leaves a and b
