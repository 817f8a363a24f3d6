"""The model registry's domain logic, pure: validation, stages, retention, lineage and history.

Nothing here talks to the API server; ``modelloop.controllers.modelversion`` applies what these decide.
"""
