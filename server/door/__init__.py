"""The door: how calls come in and go out. The gRPC transport and its call limits, the RPC
handlers, and the frontend worker processes with their IPC to the device process. Imports the
contracts, scheduling and operations; nothing of the engine (a frontend
process loads no JAX)."""
