// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// Coral's live-debugging program (issue 12): one uprobe program, attached
// by `coral-privhelper` (or a privileged agent) at function entries, at Go
// return instructions (never uretprobes on Go) and as a uretprobe on C,
// C++ and Rust. Each attach point carries a BPF cookie:
//
//     cookie = probe_id << 8 | kind      (kind: KIND_* below)
//
// Each hit sends one event with the monotonic time, tgid/tid, the integer
// argument registers (only when the probe's config allows arguments: they
// can hold secrets), the Go goroutine (`g`, R14 under the register ABI),
// the stack pointer and, for Go, the top of the goroutine's stack
// (`g->stack.hi`, the first field group of `runtime.g` in every Go
// version): `stack_hi - sp` is the same at a call's entry and at its
// return, and survives stack copies, so userspace pairs calls by
// (g, depth). Up to MAX_STRS strings or byte slices (ptr and len registers
// named by the config) are copied, STR_CAP bytes each.
//
// Per-probe hit counters feed the agent's CPU budget. A full ring drops
// the event and counts it; the traced program never waits.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define MAX_PROBES 1024
#define MAX_STRS 4
#define STR_CAP 128
#define NREGS 10

#define KIND_ENTRY 0
#define KIND_RET_INSN 1
#define KIND_URETPROBE 2

#define CFG_ARGS 1 /* capture argument registers and strings */
#define CFG_GO 2   /* read g (R14) and g->stack.hi */
#define CFG_STACK 4 /* at entries: the return address and the user stack */

#define MAX_STACK 32

#define REG_NONE 0xff
#define LEN_CSTR 0xfe /* the pointer is a NUL-terminated C string */

/* Stats slots (per CPU, summed by the agent). */
#define ST_EVENTS 0
#define ST_DROPS 1
#define ST_NO_CONFIG 2
#define ST_MAX 4

struct probe_cfg {
	__u32 flags;
	/* For each captured string: register index of its pointer and of its
	 * length (indices into event.regs), REG_NONE for unused, LEN_CSTR as
	 * the length for a C string. */
	__u8 str_ptr[MAX_STRS];
	__u8 str_len[MAX_STRS];
};

struct event {
	__u64 ktime_ns;
	__u64 cookie;
	__u32 tgid;
	__u32 tid;
	/* rax, rbx, rcx, rdi, rsi, r8, r9, r10, r11, rdx (Go ABI order, then
	 * rdx for SysV's third argument); zero unless CFG_ARGS. */
	__u64 regs[NREGS];
	__u64 g;
	__u64 stack_hi;
	__u64 sp;
	__u64 ip;
	__u64 bp;
	__u16 str_len[MAX_STRS]; /* bytes copied, 0xffff: unreadable */
	__u8 str[MAX_STRS][STR_CAP];
	/* CFG_STACK, entries only: the return address at the stack pointer
	 * (the frame-pointer walk skips the immediate caller at an entry) and
	 * the user stack (frame pointers), stack_len frames. */
	__u64 ret_addr;
	__u32 stack_len;
	__u32 _pad;
	__u64 stack[MAX_STACK];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* the loader sets the size */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PROBES);
	__type(key, __u32);
	__type(value, struct probe_cfg);
} probes SEC(".maps");

/* Hits per probe id (all CPUs, atomic adds). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_PROBES);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);
	if (v)
		*v += 1;
}

SEC("uprobe")
int coral_uprobe(struct pt_regs *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 id = (__u32)(cookie >> 8);
	__u64 *h = bpf_map_lookup_elem(&hits, &id);
	if (h)
		__sync_fetch_and_add(h, 1);
	struct probe_cfg *cfg = bpf_map_lookup_elem(&probes, &id);
	if (!cfg) {
		count(ST_NO_CONFIG);
		return 0;
	}
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(ST_DROPS);
		return 0;
	}
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	e->ktime_ns = bpf_ktime_get_ns();
	e->cookie = cookie;
	e->tgid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->sp = ctx->sp;
	e->ip = ctx->ip;
	e->bp = ctx->bp;
	e->g = 0;
	e->stack_hi = 0;
	if (cfg->flags & CFG_GO) {
		e->g = ctx->r14;
		/* runtime.g starts with stack{lo, hi uintptr}. */
		if (bpf_probe_read_user(&e->stack_hi, sizeof(e->stack_hi), (void *)(ctx->r14 + 8)))
			e->stack_hi = 0;
	}
	if (cfg->flags & CFG_ARGS) {
		e->regs[0] = ctx->ax;
		e->regs[1] = ctx->bx;
		e->regs[2] = ctx->cx;
		e->regs[3] = ctx->di;
		e->regs[4] = ctx->si;
		e->regs[5] = ctx->r8;
		e->regs[6] = ctx->r9;
		e->regs[7] = ctx->r10;
		e->regs[8] = ctx->r11;
		e->regs[9] = ctx->dx;
	} else {
		for (int i = 0; i < NREGS; i++)
			e->regs[i] = 0;
	}
#pragma unroll
	for (int i = 0; i < MAX_STRS; i++) {
		e->str_len[i] = 0;
		__u8 pr = cfg->str_ptr[i];
		__u8 lr = cfg->str_len[i];
		if (!(cfg->flags & CFG_ARGS) || pr >= NREGS)
			continue;
		__u64 ptr = e->regs[pr];
		if (lr == LEN_CSTR) {
			long n = bpf_probe_read_user_str(e->str[i], STR_CAP, (void *)ptr);
			e->str_len[i] = n > 0 ? (__u16)(n - 1) : 0xffff;
			continue;
		}
		if (lr >= NREGS)
			continue;
		__u64 len = e->regs[lr];
		if (len > STR_CAP)
			len = STR_CAP;
		if (len == 0)
			continue;
		if (bpf_probe_read_user(e->str[i], len, (void *)ptr))
			e->str_len[i] = 0xffff;
		else
			e->str_len[i] = (__u16)len;
	}
	e->ret_addr = 0;
	e->stack_len = 0;
	e->_pad = 0;
	if ((cfg->flags & CFG_STACK) && (cookie & 0xff) == KIND_ENTRY) {
		if (bpf_probe_read_user(&e->ret_addr, sizeof(e->ret_addr), (void *)ctx->sp))
			e->ret_addr = 0;
		long n = bpf_get_stack(ctx, e->stack, sizeof(e->stack), BPF_F_USER_STACK);
		e->stack_len = n > 0 ? (__u32)((__u64)n >> 3) : 0;
	}
	bpf_ringbuf_submit(e, 0);
	count(ST_EVENTS);
	return 0;
}
