"""The command line and the tools built on every layer below it (demo, benchmarks).

Layers, each importing only the ones before it:
``runtime`` (torch-free) <- ``infini_export`` (model, state, protocol, parity, tasks, training)
<- ``exporters`` (ONNX, ExecuTorch) <- ``infini_cli``.
"""
