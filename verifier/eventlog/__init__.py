"""Measured-boot and runtime event logs as the verifier uses them: RTMR replay against the
quoted registers (``rtmr``) and the claims a replayed log proves (``measured``). The byte
layouts (TCG log, CCEL table, UEFI event data, runtime log) are the ground's
(``keybroker.evidence``). A log that does not replay raises ``EventLogMismatch``. This folder
imports no evidence family folder."""
