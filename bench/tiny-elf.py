#!/usr/bin/env python3
"""Writes a minimal x86_64 ELF "kernel" with Xen's PVH entry note whose 32-bit entry halts forever
(interrupts off): the idle guest `make bench` measures VMM memory overhead and startup with."""
import struct, sys

code = bytes([0xFA, 0xF4, 0xEB, 0xFD])          # cli; 1: hlt; jmp 1b
load = 0x100_0000
note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", load)
phnum = 2
data_off = 64 + 56 * phnum
code_off = data_off + len(note)
hdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
hdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, load, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
ph_load = struct.pack("<IIQQQQQQ", 1, 5, code_off, load, load, len(code), len(code), 0x1000)
ph_note = struct.pack("<IIQQQQQQ", 4, 4, data_off, 0, 0, len(note), len(note), 4)
open(sys.argv[1], "wb").write(hdr + ph_load + ph_note + note + code)
