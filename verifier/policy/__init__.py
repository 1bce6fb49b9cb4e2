"""Appraisal policies: model, compile, the decision engine that applies one policy to verified
claims, the state in force, test cases, dry runs and the TCB report. Importing the package
imports none of its modules."""
