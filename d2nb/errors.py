"""The one exception type d2nb raises for mistakes a user can fix."""


class D2nbError(ValueError):
    """A problem with what the user passed, with the fix spelled out.

    The message always has the shape ``<what is wrong>. Fix: <what to do>``, so a notebook
    user reads the reason and the remedy without opening a traceback.
    """

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}" + (f"\nFix: {fix}" if fix else ""))
