import pytest

from server.cli import build_parser


def test_every_serve_flag_has_an_environment_twin(monkeypatch):
    monkeypatch.setenv("PHOENIX_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("PHOENIX_CANDIDATE_BUCKETS", "8,128")
    monkeypatch.setenv("PHOENIX_LOG_JSON", "1")
    monkeypatch.setenv("PHOENIX_GRACE_SECONDS", "2.5")
    args = build_parser().parse_args(["serve"])
    assert args.max_batch_size == 7
    assert args.candidate_buckets == (8, 128)
    assert args.log_json is True
    assert args.grace_seconds == 2.5
    # A flag beats its variable.
    assert build_parser().parse_args(["serve", "--max-batch-size", "3"]).max_batch_size == 3


def test_serve_help_documents_the_variables(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for flag in ("--max-batch-size", "--max-batch-wait-ms", "--max-queue", "--grace-seconds",
                 "--metrics-port", "--checkpoint"):  # fmt: skip
        assert flag in text
        assert "PHOENIX_" + flag[2:].upper().replace("-", "_") in text
