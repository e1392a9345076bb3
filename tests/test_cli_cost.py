"""Cost in the `agent-recorder` commands: usage (--by), show, ls and serve --prices.

The recorded run and its hand-computed costs are described in support/priced.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from google.protobuf import json_format
from support.priced import HELPER, LEAD, LEAD_TURNS, TREE, record_priced_tree
from support.recorder import RunningRecorder

from recorder_server.cli import build_parser, main
from recorder_server.cli.serve import config_from
from recorder_server.price_file import PRICES_ENV


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, _ = capsys.readouterr()
    assert code == 0, out
    return out


@pytest.fixture
async def target(recorder: RunningRecorder) -> str:
    await record_priced_tree(recorder.target)
    return recorder.target


async def test_usage_shows_cost_per_row_and_the_total(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = await cli(capsys, "usage", "--target", target)
    assert "cost" in out
    rows = [line for line in out.splitlines() if "│" in line]
    row = {
        key: next(line for line in rows if all(part in line for part in key.split()))
        for key in ("helper gpt-4o", "helper my-fin", "lead claude", "total")
    }
    assert f"${HELPER}" in row["helper gpt-4o"] and f"${LEAD}" in row["lead claude"]
    assert row["helper my-fin"].rstrip(" │").endswith("unpriced")
    total = rows.index(row["total"])
    assert f"${TREE}" in row["total"] and "+ 1 unpriced" in rows[total + 1]
    assert "1 model call(s) have no price (unknown model 'my-finetune'" in " ".join(out.split())


async def test_usage_by_day_model_and_agent(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = await cli(capsys, "usage", "--target", target, "--by", "day", "--json")
    report = json_format.Parse(out, api.GetUsageResponse())
    assert [(r.day, r.agent_id, r.model, r.cost.amount) for r in report.rows] == [
        ("2026-01-05", "", "", TREE)
    ]
    assert (report.total_cost.amount, report.total_cost.unpriced_calls) == (TREE, 1)
    out = await cli(capsys, "usage", "--target", target, "--by", "model")
    assert "model" in out and "agent" not in out.split("\n")[2]
    assert any("gpt-4o" in line and f"${HELPER}" in line for line in out.splitlines())
    out = await cli(capsys, "usage", "--target", target, "--by", "agent", "--json")
    rows = json_format.Parse(out, api.GetUsageResponse()).rows
    assert [(r.agent_id, r.model, r.cost.amount, r.cost.priced) for r in rows] == [
        ("helper", "", HELPER, False),
        ("lead", "", LEAD, True),
    ]


async def test_show_gives_the_cost_of_the_session_tree_loops_and_turns(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = " ".join((await cli(capsys, "show", "--target", target, "lead")).split())
    assert f"cost ${LEAD} with sub-agents ${TREE} + 1 unpriced" in out
    assert f"cache 4000 ${LEAD}" in out  # the loop
    assert f"cache 4000 ${LEAD_TURNS[0]}" in out and f"out 100 ${LEAD_TURNS[1]}" in out
    assert f"cost ${HELPER} + 1 unpriced" in out  # the sub-agent's session, nested
    assert "out 10 unpriced (unknown model 'my-finetune' of provider 'openai'" in out


async def test_ls_gives_each_sessions_cost_and_its_sub_agent_trees(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = await cli(capsys, "ls", "--target", target)
    # Piped, ls writes tab-separated lines: the cost is the last field.
    rows = {line.split("\t")[0]: line.split("\t")[-1] for line in out.splitlines()[1:]}
    assert rows["lead"] == f"${LEAD} +subs ${TREE} + 1 unpriced"
    assert rows["helper"] == f"${HELPER} + 1 unpriced"  # its tree is itself


def test_serve_takes_prices_from_the_flag_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = build_parser()
    monkeypatch.delenv(PRICES_ENV, raising=False)
    assert config_from(parser.parse_args(["serve"])).prices is None
    monkeypatch.setenv(PRICES_ENV, str(tmp_path / "env.yaml"))
    assert config_from(parser.parse_args(["serve"])).prices == tmp_path / "env.yaml"
    flag = parser.parse_args(["serve", "--prices", str(tmp_path / "flag.toml")])
    assert config_from(flag).prices == tmp_path / "flag.toml"


def test_serve_with_a_bad_prices_file_exits_naming_the_line(short_tmp: Path) -> None:
    prices = short_tmp / "prices.yaml"
    prices.write_text("prices:\n  - provider: openai\n    model: x\n    input_mtok: lots\n")
    done = subprocess.run(
        [sys.executable, "-m", "recorder_server.cli", "serve", "--db", str(short_tmp / "r.db"),
         "--listen", f"unix://{short_tmp}/r.sock", "--prices", str(prices)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{prices}:4: a price must be a non-negative number" in done.stderr
