# The optional CUDA backend (muon::cuda). Filled in by the CUDA backend work.
