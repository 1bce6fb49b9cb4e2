"""Azure confidential VMs: the HCL report, its runtime claims and the vTPM quote (issue 12
lands it in steps; not yet in the registry)."""
