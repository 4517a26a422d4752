"""Exporters: one small module per backend, all driven by the model's ``StepSpec``."""
