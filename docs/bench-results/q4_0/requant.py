"""Requantize a GGUF's Q4_1 tensors to another type (measurement only, docs/llm.md).

    python3 -m venv /tmp/gv && /tmp/gv/bin/pip install gguf==0.19.0 numpy
    /tmp/gv/bin/python requant.py SmolLM2-135M-Instruct.Q4_1.gguf smol-q4_0.gguf Q4_0
"""
import sys, numpy as np, gguf
from gguf import quants
src, dst, target = sys.argv[1], sys.argv[2], getattr(gguf.GGMLQuantizationType, sys.argv[3])
r = gguf.GGUFReader(src)
arch = r.fields['general.architecture'].contents()
w = gguf.GGUFWriter(dst, arch)
for f in r.fields.values():
    if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith('GGUF.'):
        continue
    vt = f.types[0]; st = f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
    if f.name == 'general.file_type':
        continue
    w.add_key_value(f.name, f.contents(), vt, sub_type=st)
out = []
from collections import Counter
c = Counter()
for t in r.tensors:
    c[t.tensor_type.name] += 1
    if t.tensor_type == gguf.GGMLQuantizationType.Q4_1 and target != t.tensor_type:
        x = quants.dequantize(t.data, t.tensor_type)
        shape = x.shape
        if target in (gguf.GGMLQuantizationType.F16,):
            q = x.astype(np.float16); qt = target
        else:
            q = quants.quantize(x.astype(np.float32), target); qt = target
        out.append((t.name, q, qt))
    else:
        out.append((t.name, t.data, t.tensor_type))
print(c)
for name, data, qt in out:
    if qt in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        w.add_tensor_info(name, data.shape, data.dtype, data.nbytes, qt)
    else:
        w.add_tensor_info(name, data.shape, np.uint8, data.nbytes, qt)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_ti_data_to_file()
for name, data, qt in out:
    w.write_tensor_data(data)
w.close()
