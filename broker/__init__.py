"""The broker process: Relying Party and KMS front end. Holds secrets sealed under a KEK,
release rules, challenges and the audit log; trusts only the verifier's signed result."""
