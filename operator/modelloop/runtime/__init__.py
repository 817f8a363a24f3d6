"""The controller runtime: the work queue, the status writer, the executors and the peering gate."""
