"""The operator's command, ``keybroker``: the top floor.

It drives every floor below it (the ground ``keybroker`` package, the ``verifier``, ``broker``
and ``attester_agent`` processes) with plain imports; nothing below imports it. Nothing
happens at import time.
"""
