"""Evidence simulators under a test root. INSECURE: usable only with explicit flags."""
