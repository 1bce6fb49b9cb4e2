"""``keybroker admin``: policies, release rules, reference values and TCB reports."""
