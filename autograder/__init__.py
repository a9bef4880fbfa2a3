"""Trusted autograding for the genlab course (README.md, "How grading works, and why a student cannot fool it")."""
