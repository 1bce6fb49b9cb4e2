"""TPM 2.0 evidence: quotes, AKs, event logs (the family folder takes shape issue by issue)."""
