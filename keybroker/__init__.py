"""keybroker: an attestation-gated key broker.

This package is the ground floor: process-neutral pieces (error categories, the report_data
binding, HPKE wrapping, evidence byte layouts with their builders, documents, CEL, storage
helpers, the generated wire contract). It imports nothing from the floors above: the three
processes (``verifier``, ``broker``, ``attester_agent``) and the operator's command
(``keybroker_cli``). Nothing happens at import time.
"""

__version__ = "0.1.0"
