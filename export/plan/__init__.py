"""The deployment planner (``resnet-plan``): the fastest artifact and runtime settings that keep
their precision contract on this machine, with the proof that the choice is not noise."""
