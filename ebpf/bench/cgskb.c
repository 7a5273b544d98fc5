// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// A measurement, not capture code (ebpf/bench/floor.sh, variants cgentry
// and cgfull; docs/benchmarks.md, issue 14): the least a per-cgroup packet
// design would do. cgroup_skb ingress and egress programs attached to the
// followed service's cgroup only, so other processes' sockets (wrk's here)
// run no program at all. Per packet of the service's sockets: the followed
// port's test, the connection's socket storage, and for a segment with a
// payload the copy of its first CAP bytes with its sequence number into a
// ring record, which is what the agent would need to rebuild the stream.
// What it leaves out (and a real design would add): the process behind a
// packet, retransmission and reordering handling in the agent.
// CG_ENTRY: return at the first line (what attaching costs).

#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define MAX_CPUS 128
#define CAP 4096
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MAX_CPUS);
	__type(key, __u32);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_RINGBUF);
		__uint(max_entries, 4096);
	});
} rings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct port_set {
	__u64 bits[1024];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct port_set);
} ports SEC(".maps");

struct conn {
	__u64 start_ns;
	__u64 bytes[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct conn);
} conns SEC(".maps");

struct seg_event {
	__u8 kind;
	__u8 dir;
	__u16 lport;
	__u32 seq;
	__u32 len;
	__u32 cap;
	__u64 conn_start_ns;
	__u64 ts_ns;
	__u8 data[2 * CAP];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct seg_event);
} scratch SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);
	if (v)
		*v += 1;
}

static __always_inline int seg(struct __sk_buff *skb, __u8 dir)
{
#ifdef CG_ENTRY
	return 1;
#endif
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_TCP)
		return 1;
	__u32 zero = 0;
	struct port_set *p = bpf_map_lookup_elem(&ports, &zero);
	if (!p)
		return 1;
	__u16 lport = sk->src_port;
	if (!((p->bits[(lport >> 6) & 1023] >> (lport & 63)) & 1))
		return 1;
	/* The TCP header: after a 20-byte IPv4 header with options, or a
	 * 40-byte IPv6 header (no extension headers on a TCP socket's own
	 * packets here). */
	__u32 l4;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 vihl;
		if (bpf_skb_load_bytes(skb, 0, &vihl, 1))
			return 1;
		l4 = (vihl & 15) * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		l4 = 40;
	} else {
		return 1;
	}
	__u8 th[16];
	if (bpf_skb_load_bytes(skb, l4, th, sizeof(th)))
		return 1;
	__u32 off = l4 + (th[12] >> 4) * 4;
	if (skb->len <= off)
		return 1; /* no payload: an ACK */
	struct conn init = {};
	init.start_ns = bpf_ktime_get_ns();
	struct conn *c = bpf_sk_storage_get(&conns, sk, &init, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c)
		return 1;
	struct seg_event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 1;
	__u32 len = skb->len - off;
	c->bytes[dir & 1] += len;
	e->kind = 1;
	e->dir = dir;
	e->lport = lport;
	e->seq = bpf_ntohl(*(__u32 *)&th[4]);
	e->len = len;
	e->conn_start_ns = c->start_ns;
	e->ts_ns = bpf_ktime_get_ns();
	__u32 n = len > CAP ? CAP : len;
	barrier_var(n);
	n &= 2 * CAP - 1;
	if (n == 0 || bpf_skb_load_bytes(skb, off, e->data, n))
		return 1;
	e->cap = n;
	__u32 cpu = bpf_get_smp_processor_id();
	void *ring = bpf_map_lookup_elem(&rings, &cpu);
	if (!ring)
		return 1;
	__u64 size = __builtin_offsetof(struct seg_event, data) + n;
	__u64 flags = BPF_RB_NO_WAKEUP;
	__u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	__u64 quarter = bpf_ringbuf_query(ring, BPF_RB_RING_SIZE) / 4;
	if (quarter && avail / quarter != (avail + size + 8) / quarter)
		flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(ring, e, size, flags))
		count(1);
	else
		count(0);
	return 1;
}

SEC("cgroup_skb/ingress")
int cg_in(struct __sk_buff *skb)
{
	return seg(skb, 0);
}

SEC("cgroup_skb/egress")
int cg_out(struct __sk_buff *skb)
{
	return seg(skb, 1);
}
