"""Intel SGX/TDX DCAP verification: pinned root, PCK chain and CRLs, signed collateral, TCB."""
