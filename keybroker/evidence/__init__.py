"""Byte layouts of hardware evidence, shared by the attester (builds, simulator) and the
verifier (parses). Parsing here is structural only: no signature or policy decision."""
