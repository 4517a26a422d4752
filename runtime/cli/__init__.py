"""The ``infini-run`` command line: info, run and generate for an exported artifact, without torch."""
