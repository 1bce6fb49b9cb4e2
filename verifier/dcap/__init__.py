"""The Intel DCAP evidence family (TDX and SGX quotes): pinned root, PCK chain and CRLs, signed
collateral, TCB evaluation, claims, the ``tdx:`` / ``sgx:`` policy sections and their
appraisal; ``tee.py`` is its registry entry (two platforms)."""
