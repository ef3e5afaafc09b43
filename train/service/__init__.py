"""`Run`: one run from start to finish (the accelerator, the loop, the callbacks, the output folder,
resume, signals), the plan it prints, and preflight."""
