"""Build and runtime facts: torch/CUDA at build and at run time, compiled archs, kernels per op."""
import torch

from ._loader import C, build_info

DEVICE_KEYS = ("CPU", "CUDA")


def op_table():
    """{op name: {"CPU": bool, "CUDA": bool, "emulated": bool}} for every op of the imtok_cuda namespace."""
    table = {}
    names = sorted({n.split("::", 1)[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
                    if n.startswith("imtok_cuda::")})
    for name in names:
        qual = f"imtok_cuda::{name}"
        row = {k: torch._C._dispatch_has_kernel_for_dispatch_key(qual, k) for k in DEVICE_KEYS}
        row["emulated"] = bool(C.emulated_cuda) and torch._C._dispatch_has_kernel_for_dispatch_key(
            f"imtok_cuda_emu::{name}", "CPU")
        table[name] = row
    return table


def report():
    b = build_info()
    lines = [
        "imtok_cuda",
        f"  built with   torch {b.get('torch_version')} (CUDA {b.get('torch_cuda')}), nvcc {b.get('nvcc_version')}, "
        f"archs {b.get('cuda_arch_list')}, CUDA kernels {'yes' if C.with_cuda else 'no'}, "
        f"emulated CUDA kernels {'yes' if C.emulated_cuda else 'no'}",
        f"  running      torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none visible'}",
        f"  {'op':<34} CPU   CUDA  emulated-CUDA",
    ]
    for name, row in op_table().items():
        lines.append(f"  {name:<34} {'yes' if row['CPU'] else 'no':<5} {'yes' if row['CUDA'] else 'no':<5} "
                     f"{'yes' if row['emulated'] else 'no'}")
    return "\n".join(lines)


def main():
    print(report())
