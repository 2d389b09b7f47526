"""Rewrite a GGUF model's Q4_1 weights as Q4_0, with the gguf package (llama.cpp's own Python side).

Why: ggml repacks Q4_0 weights at load into its interleaved CPU layout (AVX2/AVX-512/NEON
kernels); Q4_1 has no such kernels. The bundled SmolLM2-135M ships as Q4_1 only, and decodes
52 → 61 tokens/s alone and 23.5 → 34.7 tokens/s per stream with four at once as Q4_0 on the
2-core box (docs/llm.md). The conversion is deterministic (numpy, ggml's reference rounding), so
core/assets.py pins the result's sha256 like any other file.

    python -m core.requantize SRC.gguf DST.gguf
"""
from __future__ import annotations

import sys
from pathlib import Path

SOURCE_TYPE = "Q4_1"
TARGET_TYPE = "Q4_0"
_MOSTLY_Q4_0 = 2  # llama_ftype LLAMA_FTYPE_MOSTLY_Q4_0, for `general.file_type`


def requantize(src: Path, dst: Path) -> dict[str, int]:
    """Write `dst`: `src` with every Q4_1 tensor dequantized and quantized again as Q4_0, every
    other tensor and all metadata as they were. Returns how many tensors of each type `src` had."""
    import gguf  # imported here: only the asset step needs it
    import numpy as np
    from gguf import quants

    source = gguf.GGMLQuantizationType[SOURCE_TYPE]
    target = gguf.GGMLQuantizationType[TARGET_TYPE]
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    for field in reader.fields.values():
        # The writer writes the architecture itself; GGUF.* are the reader's view of the header.
        if field.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE) or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(_MOSTLY_Q4_0)
    counts: dict[str, int] = {}
    tensors = []
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
        data, kind = tensor.data, tensor.tensor_type
        if kind == source:
            data, kind = quants.quantize(quants.dequantize(data, source).astype(np.float32), target), target
        tensors.append((tensor.name, data, kind))
    for name, data, kind in tensors:
        plain = kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
        # A quantized tensor is stored as bytes; its shape is given in bytes and converted back.
        writer.add_tensor_info(name, data.shape, data.dtype if plain else np.uint8, data.nbytes, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, data, _ in tensors:
        writer.write_tensor_data(data)
    writer.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    print(requantize(Path(args[0]), Path(args[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
