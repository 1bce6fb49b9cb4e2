"""AMD SEV-SNP verification: TCB versions, VCEK/VLEK certificates, the AMD chain, claims."""
