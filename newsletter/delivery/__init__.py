"""The send: one subscriber's message (`compose`, `signing`, `tokens`), the engine that claims,
marks and records each message exactly once (`engine`, with its worker processes in `workers`),
the ledger it writes to (`records`, `ledger`) and the wire (`transport`)."""
