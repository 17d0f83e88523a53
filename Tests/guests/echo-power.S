/* A tiny PVH guest for kumo-vmm and kumod tests: it prints a banner on COM1, echoes what it is sent
 * upper-cased (so a test sees that the bytes went through the guest), and powers off (ACPI S5) when
 * the host presses the ACPI power button (the Generic Event Device's register at port 0x604) —
 * an OS that honours the button, in a dozen instructions. Build: as --64, ld -m elf_x86_64. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4, 4, 18              /* name size, descriptor size, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long _start

    .text
    .code32
    .globl _start
_start:
    mov $banner, %esi
1:  movb (%esi), %al
    test %al, %al
    jz 2f
    mov $0x3f8, %dx
    out %al, %dx
    inc %esi
    jmp 1b
2:  mov $0x604, %dx             /* GED event register: reading takes the pending events */
    in %dx, %eax
    test $1, %eax
    jnz 4f
    mov $0x3fd, %dx             /* LSR: data ready? */
    in %dx, %al
    test $1, %al
    jz 2b
    mov $0x3f8, %dx
    in %dx, %al
    cmp $'a', %al
    jb 3f
    cmp $'z', %al
    ja 3f
    sub $0x20, %al
3:  out %al, %dx
    jmp 2b
4:  mov $banner2, %esi
5:  movb (%esi), %al
    test %al, %al
    jz 6f
    mov $0x3f8, %dx
    out %al, %dx
    inc %esi
    jmp 5b
6:  mov $0x600, %dx
    mov $0x34, %al              /* SLP_TYP 5 | SLP_EN: power off */
    out %al, %dx
7:  hlt
    jmp 7b

banner:  .asciz "kumo echo guest ready\r\n"
banner2: .asciz "\r\npower button: powering off\r\n"
