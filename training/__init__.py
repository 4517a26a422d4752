"""Training an Infini-Transformer on passkey retrieval (``scripts/train_passkey.py`` is its command line).

- ``config``: :class:`~.config.TrainConfig`, every setting of a run with its help text (the script's options);
- ``batches``: training batches, the length curriculum and the held-out prompts;
- ``extrapolation``: the state-extrapolation lever (a long filler stream's state in a short training input);
- ``losses`` / ``optim``: the objective, the optimizer and its schedule;
- ``session``: the eager model behind the runtime's session protocol, for greedy evaluation;
- ``evaluate``: held-out and ``--evaluate`` exact match;
- ``proxy``: the cheap long-input proxy and the lever's check against a real stream;
- ``report``: progress lines, train_report.json / .png;
- ``loop``: :func:`~.loop.train`, the run itself (fresh, resumed, from other weights).
"""
