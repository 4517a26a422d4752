"""A backend that keeps the protocol but has no program: a session over it holds, checks, saves and loads state
without running anything (the state-file and manifest tests)."""


class NoProgram:
    name, has_full, has_last, has_decode = "none", True, False, False

    def run(self, ids, state):
        raise AssertionError("this session has no program; the test must not run one")

    run_last = run

    def run_decode(self, ids, position, state, cache):
        raise AssertionError("this session has no program; the test must not run one")
