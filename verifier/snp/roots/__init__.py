"""Package data: the AMD ARK/ASK/ASVK PEMs pinned by verifier.snp.trust (copied from
google/go-sev-guest verify/trust/, see tests/vectors/README.md for provenance)."""
