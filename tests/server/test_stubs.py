"""The committed Python stubs are what grpcio-tools generates from proto/ today."""

from __future__ import annotations

import re

from server.rpc import ranking_pb2
from server.rpc.generate import OUTPUTS, generate
from tests.conftest import ROOT


def test_committed_stubs_match_the_proto(tmp_path):
    generate(tmp_path)

    def normalise(text: str) -> str:  # only the generator's version stamps may differ
        text = re.sub(r"GRPC_GENERATED_VERSION = '[^']*'", "", text)
        text = re.sub(r"# Protobuf Python Version: .*", "", text)
        return re.sub(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)", "", text)

    assert len(OUTPUTS) == 6  # ours and xAI's subset
    for name in OUTPUTS:
        fresh = (tmp_path / "server" / "rpc" / name).read_text()
        committed = (ROOT / "server" / "rpc" / name).read_text()
        assert normalise(fresh) == normalise(committed), (
            f"{name} is stale: run python -m server.rpc.generate"
        )


def test_actions_enum_is_the_model_order():
    from request.actions import ACTIONS

    names = [v.name for v in ranking_pb2.Action.DESCRIPTOR.values]
    assert names == ["ACTION_UNSPECIFIED"] + ["ACTION_" + a.upper() for a in ACTIONS]
    assert [v.number for v in ranking_pb2.Action.DESCRIPTOR.values] == list(range(20))
