"""Microsoft Azure Attestation tokens as upstream evidence (issue 12 lands it in steps)."""
