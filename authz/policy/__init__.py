"""Policy: the model (frozen dataclasses), the schema (mapping ⇄ model) and the engine."""
