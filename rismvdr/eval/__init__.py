"""Evaluation: the metrics of SPEC section 7, the CRB glue, objectives, tables and plots."""
