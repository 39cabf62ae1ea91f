#!/usr/bin/env python3
# Here, before carrying the CUDA provider to the GPU machine (an H100/H200, compute capability 9.0): writes a copy of
# libonnxruntime_providers_cuda.so whose fat-binary entries for other GPUs (sm_75/80/86/89/120 cubins, PTX) are
# zeroed, so that it compresses to a fraction of the original (one device call carries at most 64 MiB). Host code
# and the sm_90 cubins stay byte-identical; the file keeps its size and layout, so the loader and the CUDA runtime
# see the same ELF. Fat-binary layout (as observed in this file): containers start with magic 0xBA55ED50, u16
# version, u16 header size, u64 payload size; each entry has u16 kind (1 PTX, 2 cubin), u16, u32 header size,
# u64 payload size, and its target architecture as u32 at offset 28 (90 = sm_90).
# Usage: cuda-sm90-only.py IN.so OUT.so
import struct, sys

src, dst = sys.argv[1], sys.argv[2]
b = bytearray(open(src, 'rb').read())
magic = struct.pack('<I', 0xBA55ED50)
kept = zeroed = containers = 0
at = b.find(magic)
while at >= 0:
    version, header, size = struct.unpack_from('<HHQ', b, at + 4)
    if version != 1 or header != 16 or at + header + size > len(b):
        at = b.find(magic, at + 4)  # not a container (the magic's bytes elsewhere)
        continue
    containers += 1
    e, end = at + header, at + header + size
    while e < end:
        kind, _, eh, es = struct.unpack_from('<HHIQ', b, e)
        arch = struct.unpack_from('<I', b, e + 28)[0]
        if eh < 32 or e + eh + es > end:
            sys.exit(f'{src}: fat-binary entry at {e} does not parse (header {eh}, size {es}); file layout changed?')
        if kind == 2 and arch == 90:
            kept += es
        else:
            b[e + eh:e + eh + es] = bytes(es)
            zeroed += es
        e += eh + es
    at = b.find(magic, end)
if kept == 0:
    sys.exit(f'{src}: no sm_90 cubin found; not writing {dst}')
open(dst, 'wb').write(b)
print(f'{containers} fat binaries: kept {kept / 2**20:.1f} MiB of sm_90 cubins, zeroed {zeroed / 2**20:.1f} MiB')
