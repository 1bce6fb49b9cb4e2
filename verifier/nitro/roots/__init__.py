"""Package data: the AWS Nitro Enclaves root certificate (G1) pinned by verifier.nitro.chain
(SHA-256 of its DER 641a0321...79bb5b, as AWS publishes it; see tests/vectors/README.md for
provenance)."""
