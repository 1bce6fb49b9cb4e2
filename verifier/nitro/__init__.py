"""The AWS Nitro Enclaves family (issue 13)."""
