"""Evidence collectors, one module per guest interface."""
