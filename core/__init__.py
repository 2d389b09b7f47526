"""What several layers share, below the stages: config helpers, the embedded model assets, the
stage registry and the model-work scheduler. Nothing here imports a stage, the controller or a
transport (dependencies point down: realtime → controller → stages → core)."""
