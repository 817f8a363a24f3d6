"""TrainingRun's domain logic, pure: the Job it needs, what its pods say, sweeps, the registered model.

Nothing here talks to the API server; ``modelloop.controllers.trainingrun`` does, with these functions.
"""
