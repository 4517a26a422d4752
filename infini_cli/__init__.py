"""The command line and the demo.

Layers, each importing only the ones before it:
``runtime`` (torch-free) <- ``infini_export`` (model, state, protocol, parity) <- ``exporters`` (ONNX, ExecuTorch)
<- ``tasks`` (passkey) <- ``training`` <- ``infini_cli``; ``benchmarks/`` (not installed) sits above them all.
"""
