"""The verifier's collateral: what endorses evidence (certificates, CRLs, signed vendor
documents), indexed for lookup. It imports no TEE folder; TEE folders import it."""
