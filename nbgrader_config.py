# nbgrader reads this file when run from the repository root; the settings live in
# autograder/nbgrader_config.py.
load_subconfig("autograder/nbgrader_config.py")  # noqa: F821
