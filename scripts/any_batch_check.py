"""Temporal attention at any batch: B x P x H >= 2^20 sequences and more than 2^31 elements per
tensor (scripts/gpu_check.sh build-test runs it on the GPU; --small runs the same code on the CPU).

    python scripts/any_batch_check.py [--small] [--device cuda]

SDPA's flash and memory-efficient kernels fail from a batch of 65536 sequences, and 32-bit
offsets wrap past 2^31 elements. Checked: the fused kernels and the reference (which slices its
SDPA calls) both run; their outputs agree where both are bf16; the last clip, whose elements all
lie past the 2^31 offset, matches a float64 attention of its own in the forward and, for the
fused path, in the backward. Prints one line per check and exits 1 on a failure.
"""
import argparse
import sys

import torch

from gfcore.ops import attention_reference
from gfcore.ops.attention import temporal_attention

# 17 x 16 frames x 4096 patches x 16 heads x 128: 1,114,112 sequences, 2.28e9 elements (4.6 GB bf16)
FULL = (17, 16, 4096, 16, 128)
SMALL = (3, 5, 16, 2, 8)  # the same code paths on the CPU (no limits crossed)


def float64_attention(q, k, v, causal):
    """[B, T, P, H, D] along T in float64, written out (no SDPA)."""
    qs, ks, vs = (x.double().movedim(1, 3) for x in (q, k, v))  # [B, P, H, T, D]
    scores = qs @ ks.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        t = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return (scores.softmax(-1) @ vs).movedim(3, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a small shape (CPU check of this script)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    shape = SMALL if args.small else FULL
    b, t, p, h, d = shape
    sequences, elements = b * p * h, b * t * p * h * d
    print(f"shape {shape}: {sequences} sequences, {elements} elements per tensor, on {args.device}")
    if not args.small:
        assert sequences >= 2 ** 20 and elements > 2 ** 31 and b * p > attention_reference.SDPA_MAX_BATCH
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    gen = torch.Generator(device=args.device).manual_seed(0)
    q, k, v = (torch.randn(shape, generator=gen, device=args.device, dtype=dtype) for _ in range(3))
    failures = 0

    def check(name, got, want, tol):
        nonlocal failures
        err, finite = 0.0, True
        for i in range(got.shape[0]):  # clip by clip: a float64 copy of a whole tensor is 18 GB
            err = max(err, (got[i].double() - want[i].double()).abs().max().item())
            finite = finite and bool(torch.isfinite(got[i]).all())
        ok = err <= tol and finite
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: max |error| {err:.3g} (tolerance {tol:.3g})")

    # bf16 outputs within [-4, 4]: half an ulp is at most 2^-7, P rounded to bf16 adds up to 2^-8 of
    # the output's magnitude sum; 2^-5 leaves room for both, on either side of a comparison
    tol = 2 ** -5 if dtype == torch.bfloat16 else 1e-5
    for causal in (False, True):
        with torch.no_grad():
            fused = temporal_attention(q, k, v, causal=causal, impl="fused")
            last = float64_attention(q[-1:], k[-1:], v[-1:], causal)
            check(f"fused forward, last clip vs float64 (causal={causal})", fused[-1:], last, tol)
            reference = temporal_attention(q, k, v, causal=causal, impl="reference")
            check(f"reference forward, last clip vs float64 (causal={causal})", reference[-1:], last, tol)
            check(f"fused vs reference forward, all clips (causal={causal})", fused, reference, 2 * tol)
            del fused, reference
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = temporal_attention(*leaves, causal=True, impl="fused")
    grad_out = torch.randn(shape, generator=gen, device=args.device, dtype=dtype)
    grads = torch.autograd.grad(out, leaves, grad_out)
    del out
    small = [x[-1:].double().requires_grad_() for x in (q, k, v)]
    want = torch.autograd.grad(float64_attention(*small, True), small, grad_out[-1:].double())
    scale = max(w.abs().max().item() for w in want)
    for name, got, w in zip("qkv", grads, want):
        check(f"fused backward grad_{name}, last clip vs float64", got[-1:], w, tol * max(1.0, scale))
    print("any-batch check:", "passed" if failures == 0 else f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
