"""Operations: what the operator sees and drives. Metrics and their HTTP endpoint with the
probes, the lifecycle's phases, logs, the checkpoint directory's versions, the transport's
counts, and the tables generated into the docs. Of the server it imports only the ground
(`server.config`, `server.errors`)."""
