"""Package data: the Intel SGX Root CA (DER) pinned by verifier.dcap.trust (copied from
tests/vectors/tdx/intel-roots/IntelSGXRootCA.der, see tests/vectors/README.md for provenance)."""
