"""The hand-written protobuf wire format agrees with protobuf's own encoder."""

from __future__ import annotations

import pytest

from server.contracts.wire import length_delimited, varint
from server.rpc import ranking_pb2 as pb


@pytest.mark.parametrize("value", [1, 127, 128, 300, 2**21, 2**32 - 1])
def test_varints_and_length_delimited_fields_are_what_protobuf_writes(value):
    info = pb.ModelInfo(history_seq_len=value)
    number = pb.ModelInfo.DESCRIPTOR.fields_by_name["history_seq_len"].number
    assert info.SerializeToString() == varint(number << 3) + varint(value)
    text = "é" * (value % 200)
    message = pb.RankResponse(model_version=text)
    field = pb.RankResponse.DESCRIPTOR.fields_by_name["model_version"].number
    assert message.SerializeToString() == length_delimited(field, text.encode())
