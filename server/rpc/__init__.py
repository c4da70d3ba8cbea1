"""Generated gRPC/protobuf stubs for `proto/phoenix/ranking/v1/ranking.proto`.

Never edit `ranking_pb2*.py` by hand: run `python -m server.rpc.generate` after changing the
proto. `tests/server/test_stubs.py` fails when the committed stubs and the proto disagree.
"""
