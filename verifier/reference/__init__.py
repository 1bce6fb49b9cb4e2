"""Reference values: named, versioned sets of golden measurements with provenance, their
lifecycle store and signed manifests."""
