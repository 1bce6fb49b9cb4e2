"""Measured-boot event logs: the TCG PC Client crypto-agile format (``tcg``) and the TDX CCEL
table, RTMR replay and the check against quoted RTMRs (``ccel``). Parsing raises only
``Malformed``; a log that does not replay to the quoted registers raises ``EventLogMismatch``."""
