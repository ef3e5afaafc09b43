"""Making the accelerator: what a process runs on and how its kernels behave (determinism today;
the device, precision and strategy move here from `train.engine.devices` next). Below the engine:
it knows nothing of the loop."""
