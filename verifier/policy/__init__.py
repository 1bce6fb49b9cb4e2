"""Appraisal policies: model, compile, the state in force, test cases, dry runs and the TCB
report. Importing the package imports none of its modules."""
