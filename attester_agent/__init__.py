"""The attester agent: runs in the guest, gathers evidence bound to a challenge and an
ephemeral HPKE key, and unwraps released secrets. Holds no long-term secret."""
