/* A tiny 64-bit guest for kumo-vmm's display tests (booted through the 64-bit protocol: %rsi points at
 * boot_params). It reads screen_info as Linux would (VIDEO_TYPE_EFI, base, size, line length), paints the
 * framebuffer dark blue with a white 200x50 bar at (100, 100), says so on COM1, then polls the i8042: each
 * scan code it reads is printed ("key 1e") and each key press draws a 16x16 green square in a row at
 * y = 200, one further right each time; 's' instead scrolls the screen up 16 rows and draws a new
 * line (a bar) at the bottom, and 'f' repaints all of it (a pattern of dots). The ACPI power button powers
 * it off. It turns the PS/2 mouse's reporting on and prints each byte the mouse sends ("aux 08").
 * Interrupts stay off.
 * Build: as --64, ld -m elf_x86_64. */
    .text
    .code64
    .globl _start
_start:
    mov %rsi, %r15
    cmpb $0x70, 0x0f(%r15)          /* orig_video_isVGA: VIDEO_TYPE_EFI */
    jne nodisplay
    mov 0x18(%r15), %edi            /* lfb_base */
    mov 0x3a(%r15), %eax            /* ext_lfb_base */
    shl $32, %rax
    or %rax, %rdi                   /* %rdi: the framebuffer */
    movzwl 0x12(%r15), %r8d         /* width */
    movzwl 0x14(%r15), %r9d         /* height */
    movzwl 0x24(%r15), %r10d        /* line length in bytes */
    mov %rdi, %r14
    /* Every line dark blue. */
    xor %ecx, %ecx                  /* y */
1:  mov %rcx, %rax
    imul %r10, %rax
    lea (%r14,%rax), %rdx
    xor %ebx, %ebx                  /* x */
2:  movl $0x000000aa, (%rdx,%rbx,4)
    inc %ebx
    cmp %r8d, %ebx
    jb 2b
    inc %ecx
    cmp %r9d, %ecx
    jb 1b
    /* The white bar. */
    mov $100, %ecx
3:  mov %rcx, %rax
    imul %r10, %rax
    lea (%r14,%rax), %rdx
    mov $100, %ebx
4:  movl $0x00ffffff, (%rdx,%rbx,4)
    inc %ebx
    cmp $300, %ebx
    jb 4b
    inc %ecx
    cmp $150, %ecx
    jb 3b
    mov $0x64, %dx                  /* the mouse (i8042 aux port): report movement; its 0xfa comes back */
    mov $0xd4, %al
    out %al, %dx
    mov $0x60, %dx
    mov $0xf4, %al
    out %al, %dx
    lea ready(%rip), %rsi
    call puts
    xor %r13d, %r13d                /* key presses so far */
loop:
    mov $0x604, %dx                 /* GED: the power button */
    in %dx, %eax
    test $1, %eax
    jnz off
    mov $0x64, %dx                  /* i8042 status: output buffer full? */
    in %dx, %al
    test $1, %al
    jz loop
    test $0x20, %al                 /* the mouse's byte */
    jnz auxbyte
    mov $0x60, %dx
    in %dx, %al
    mov %eax, %r12d
    lea key(%rip), %rsi
    call puts
    mov %r12d, %eax
    call puthex
    mov $'\n', %al
    call putc
    test $0x80, %r12b               /* a release, or the 0xe0 prefix: nothing to draw */
    jnz loop
    cmp $0x1f, %r12b                /* 's': scroll up a 16-row line, as a text console does */
    je scroll
    cmp $0x21, %r12b                /* 'f': paint the whole screen anew */
    je repaint
    /* A 16x16 green square at (16 * presses, 200). */
    mov $200, %ecx
5:  mov %rcx, %rax
    imul %r10, %rax
    lea (%r14,%rax), %rdx
    mov %r13d, %ebx
    shl $4, %ebx
    lea 16(%rbx), %r11d
6:  movl $0x0000ff00, (%rdx,%rbx,4)
    inc %ebx
    cmp %r11d, %ebx
    jb 6b
    inc %ecx
    cmp $216, %ecx
    jb 5b
    inc %r13d
    jmp loop
auxbyte:
    mov $0x60, %dx
    in %dx, %al
    mov %eax, %r12d
    lea aux(%rip), %rsi
    call puts
    mov %r12d, %eax
    call puthex
    mov $'\n', %al
    call putc
    jmp loop
scroll:
    mov %r14, %rdi
    mov %r10, %rax
    shl $4, %rax
    lea (%r14,%rax), %rsi           /* from row 16 to row 0 */
    lea -16(%r9), %rcx
    imul %r10, %rcx
    shr $3, %rcx
    cld
    rep movsq                       /* %rdi: row height - 16 */
    inc %r13d
    mov %r13d, %eax                 /* the new line: a white bar 8 * (presses % 64 + 1) wide */
    and $63, %eax
    inc %eax
    shl $3, %eax
    xor %ecx, %ecx                  /* y in the line */
10: xor %ebx, %ebx
11: mov $0x000000aa, %edx
    cmp %eax, %ebx
    jae 12f
    mov $0x00ffffff, %edx
12: mov %edx, (%rdi,%rbx,4)
    inc %ebx
    cmp %r8d, %ebx
    jb 11b
    add %r10, %rdi
    inc %ecx
    cmp $16, %ecx
    jb 10b
    jmp loop
repaint:
    inc %r13d                       /* white where ((x ^ y) + presses) % 8 == 0, else dark blue */
    xor %ecx, %ecx
13: mov %rcx, %rax
    imul %r10, %rax
    lea (%r14,%rax), %rdi
    xor %ebx, %ebx
14: mov %ebx, %eax
    xor %ecx, %eax
    add %r13d, %eax
    mov $0x000000aa, %edx
    test $7, %eax
    jnz 15f
    mov $0x00ffffff, %edx
15: mov %edx, (%rdi,%rbx,4)
    inc %ebx
    cmp %r8d, %ebx
    jb 14b
    inc %ecx
    cmp %r9d, %ecx
    jb 13b
    jmp loop
off:
    lea bye(%rip), %rsi
    call puts
    mov $0x600, %dx                 /* ACPI sleep control: S5 and SLP_EN */
    mov $0x34, %al
    out %al, %dx
    hlt
nodisplay:
    lea none(%rip), %rsi
    call puts
7:  hlt
    jmp 7b

/* puts: the NUL-terminated string at %rsi to COM1. */
puts:
    movb (%rsi), %al
    test %al, %al
    jz 9f
    call putc
    inc %rsi
    jmp puts
9:  ret
/* putc: %al to COM1. */
putc:
    push %rdx
    mov $0x3f8, %dx
    out %al, %dx
    pop %rdx
    ret
/* puthex: %al as two lowercase hex digits. */
puthex:
    push %rax
    shr $4, %al
    and $0xf, %al
    call hexdigit
    pop %rax
    and $0xf, %al
hexdigit:
    add $'0', %al
    cmp $'9', %al
    jbe putc
    add $('a' - '0' - 10), %al
    jmp putc

    .section .rodata
ready: .asciz "kumo display guest ready\n"
key: .asciz "key "
aux: .asciz "aux "
bye: .asciz "power button: powering off\n"
none: .asciz "kumo display guest: no display in screen_info\n"
