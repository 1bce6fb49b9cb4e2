"""keybroker: an attestation-gated key broker.

Shared, process-neutral pieces live here (error categories, the report_data binding, HPKE
wrapping, evidence byte layouts, the CLI). The three processes are the packages ``verifier``,
``broker`` and ``attester_agent``. Nothing happens at import time.
"""

__version__ = "0.1.0"
