"""The verifier process: parses and verifies evidence, appraises it against policy and
issues signed EAR attestation results. It holds trust anchors, collateral, reference values,
appraisal policies and the result-signing key, and never any released secret."""
