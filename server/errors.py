"""Service errors and their gRPC status codes: the one place where failures map to codes.

InvalidArgument   INVALID_ARGUMENT    bad input; the message names the field
QueueFull         RESOURCE_EXHAUSTED  overload; retry after `retry_after_ms`
ShuttingDown      UNAVAILABLE         draining or warming up; retry elsewhere/later
Withdrawn         UNAVAILABLE         no model version may serve (corrupt, changed or non-finite);
                                      the message says why; retry on another replica
DataLoss          DATA_LOSS           the model scored non-finite values for the request: nothing
                                      is answered OK that is not a finite score
DeadlineExceeded  DEADLINE_EXCEEDED   the deadline passed, or cannot be met, before compute
Unimplemented     UNIMPLEMENTED       a call or option this server does not offer (or has off)
FailedPrecondition FAILED_PRECONDITION a call the server's configuration cannot honour
anything else     INTERNAL            logged with the request id
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class QueueFull(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class ShuttingDown(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class Withdrawn(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ServiceError):
    code = grpc.StatusCode.DATA_LOSS


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(ServiceError):
    code = grpc.StatusCode.UNIMPLEMENTED


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
