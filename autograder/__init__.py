"""Trusted autograding for the genlab course (see DESIGN.md, "the trust model")."""
