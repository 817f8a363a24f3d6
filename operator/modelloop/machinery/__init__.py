"""The controller machinery every controller runs on: the work queue, the reconcile shell, the status
writer, events, the executors, the operator's own metrics and the peering gate."""
