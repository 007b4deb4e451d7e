"""LTI 1.3: the only package that imports pylti1p3 or a JWT library (see docs/DESIGN.md)."""
