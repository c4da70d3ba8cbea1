"""Generated gRPC/protobuf stubs of the protos under `proto/`: `ranking_pb2*` (ours,
`phoenix.ranking.v1`) and `recsys_pb2*` (our subset of xAI's `xai.recsys.v1`).

Never edit them by hand: run `python -m server.rpc.generate` after changing a proto.
`tests/server/test_stubs.py` fails when the committed stubs and the protos disagree.
"""
