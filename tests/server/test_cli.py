"""The serve flags and PHOENIX_* variables are generated from ServerConfig: checked field by field."""

import dataclasses
import re
import subprocess

import pytest

from phoenix_ranker.cli import build_parser
from server.config import ServerConfig
from server.flags import OPTIONS_DOC, config_from_args, options, options_table
from tests.conftest import ROOT
from tests.server.harness import phoenix_ranker

OPTIONS = list(options())


def _other_value(opt):
    """A valid value for `opt` that differs from its default, as text and as parsed."""
    default = opt.field.default
    if opt.choices:
        text = next(c for c in opt.choices if c != default)
    elif opt.kind is bool:
        text = "0" if default else "1"
    elif opt.kind is tuple:
        text = "3,5"
    elif opt.kind in (int, float):
        text = str((default or 1) + 7)
    else:
        text = "/tmp/elsewhere"
    return text, opt.parse(text)


def _leaf(config, opt):
    for name in opt.path:
        config = getattr(config, name)
    return config


def test_every_field_is_a_leaf_option_with_help():
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names)), "flag names must be unique across nested configs"
    for opt in OPTIONS:
        assert opt.help and not opt.help.endswith("."), opt.name
    nested = [
        f.name
        for f in dataclasses.fields(ServerConfig)
        if f.name in ("limits", "shapes", "batcher")
    ]
    assert nested == ["limits", "shapes", "batcher"]


@pytest.mark.parametrize("opt", OPTIONS, ids=[o.name for o in OPTIONS])
def test_every_field_has_a_flag_and_an_environment_twin(opt, monkeypatch):
    text, value = _other_value(opt)
    assert _leaf(config_from_args(build_parser().parse_args(["serve"])), opt) == opt.field.default
    by_flag = config_from_args(build_parser().parse_args(["serve", opt.flag, text]))
    assert _leaf(by_flag, opt) == value
    monkeypatch.setenv(opt.env, text)
    by_env = config_from_args(build_parser().parse_args(["serve"]))
    assert _leaf(by_env, opt) == value
    # A flag wins over its variable.
    back = opt.render(opt.field.default)
    if back or opt.optional:
        again = config_from_args(build_parser().parse_args(["serve", opt.flag, back]))
        assert _leaf(again, opt) == opt.field.default


def test_a_bare_boolean_flag_means_true():
    assert build_parser().parse_args(["serve", "--log-json"]).log_json is True


def test_a_malformed_variable_is_a_one_line_error():
    run = subprocess.run(
        [*phoenix_ranker(), "serve"], capture_output=True, text=True, timeout=60,
        env={"PHOENIX_MAX_BATCH_SIZE": "lots", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "PHOENIX_MAX_BATCH_SIZE" in run.stderr, run.stderr


def test_the_options_doc_table_is_the_generated_one():
    doc = OPTIONS_DOC.read_text()
    assert options_table() in doc, (
        "docs/options.md is stale: run `python -m server.flags --update-docs`"
    )
    for opt in OPTIONS:
        assert re.search(rf"`{opt.flag}`", doc)


def test_the_metrics_tables_are_the_generated_one():
    from server.operations.metrics import DOCUMENTS, metrics_table

    table = metrics_table()
    assert len(table.splitlines()) > 30  # every series, not a stub
    for path in DOCUMENTS:
        assert table in path.read_text(), (
            f"{path.name} is stale: run `python -m server.operations.metrics --update-docs`"
        )


def test_serve_help_documents_every_variable(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for opt in OPTIONS:
        assert opt.flag in text and opt.env in text


def test_the_compilation_cache_is_on_by_default_and_an_empty_value_turns_it_off(monkeypatch):
    assert str(ServerConfig().compilation_cache).startswith("~/.cache/phoenix-ranker")
    monkeypatch.setenv("PHOENIX_COMPILATION_CACHE", "")
    assert config_from_args(build_parser().parse_args(["serve"])).compilation_cache is None


def test_a_compilation_cache_that_cannot_be_created_is_a_warning(tmp_path, caplog):
    from server.engine.device import enable_compilation_cache

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    enable_compilation_cache(blocker / "cache")  # under a file: cannot be created
    assert "compilation cache off" in caplog.text


# -- `rank` with xAI's requests ------------------------------------------------------------


def rank_cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*phoenix_ranker(), "rank", "--target", server.target, *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.slow
def test_rank_sends_each_xai_example_to_predict_next_actions(default_server):
    from tests.server import xai_forms

    raw = xai_forms.example_raw()
    for name in xai_forms.EXAMPLES:
        ranked = rank_cli(default_server, "--request", str(ROOT / "examples" / name))
        assert ranked.returncode == 0, ranked.stderr
        lines = ranked.stdout.splitlines()
        assert f"user {raw.user_id}, 3 candidates, logprob, 19 of 19 actions" in lines[0], lines
        assert "score" in lines[1] and "favorite" in lines[1]
        rows = [line.split() for line in lines[3:]]
        assert sorted(int(r[1]) for r in rows) == sorted(raw.candidate_post_ids.tolist())
        scores = [float(r[3]) for r in rows]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_rank_prints_what_a_logits_list_answer_carries_and_the_answer_itself(default_server,
                                                                              tmp_path):  # fmt: skip
    import json

    request = json.loads((ROOT / "examples" / "xai-aggregated.json").read_text())
    request |= {"returnLogitsList": True, "requestedActionIndices": [1, 107, 38],
                "requestedContinuousActionIndices": [1], "returnBackboneScores": True}  # fmt: skip
    path = tmp_path / "logits-list.json"
    path.write_text(json.dumps(request))
    ranked = rank_cli(default_server, "--request", str(path))
    assert ranked.returncode == 0, ranked.stderr
    # favorite (1), quoted_click (38) and dwell_time: what the answer carries
    assert "logits_list, 3 of 19 actions returned" in ranked.stdout
    assert "favorite" in ranked.stdout.splitlines()[1]
    answer = json.loads(rank_cli(default_server, "--request", str(path), "--json").stdout)
    first = answer["distributionSets"][0]["candidateDistributions"][0]
    assert first["requestedActionLogits"][1] == "-Infinity" and set(first) == {
        "candidate", "indexToContinuousValues", "requestedActionLogits"}  # fmt: skip


def test_rank_refuses_a_malformed_xai_request_in_one_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"candidateSets": [{"candidates": "not a list"}]}')
    run = subprocess.run([*phoenix_ranker(), "rank", "--request", str(path), "--target", "127.0.0.1:9"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "not a PredictNextActionsRequest" in run.stderr and "Traceback" not in run.stderr
