"""Tutors: accounts (LTI-linked or invited experts), pools, skills and availability."""
