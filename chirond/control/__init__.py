"""The control tick, written once for the daemon and the simulator: the instance record and its
lifecycle rules, the observations policies read, the pure snapshot builder, and the reconciler that
applies a policy's decision through an `Actuator` (the one thing each world implements)."""
