"""Reading files without running their code.

Every file gfcore reads goes through here: checkpoints and weights with
`torch.load(weights_only=True)` (tensors and plain containers, plus an explicit allowlist per
caller), never a plain unpickle; TorchScript networks, which are code by nature, only after
their SHA-256 matches the published file or the user says they trust it.
"""
from gfcore.io.safe_load import UnsafeFileError, load_weights_only, sha256_of, verify_sha256

__all__ = ["UnsafeFileError", "load_weights_only", "sha256_of", "verify_sha256"]
