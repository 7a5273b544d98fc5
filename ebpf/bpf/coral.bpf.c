// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// Coral's RED + connection-map programs.
//
// * Request capture (HTTP/1.x, HTTP/2, gRPC, PostgreSQL, Redis are parsed
//   in userspace): the BTF tracepoints sock_recv_length and sock_send_length
//   (tp_btf), which sock_recvmsg and sock_sendmsg fire once a socket read or
//   write (read, readv, recv*, write, writev, send*) has moved its bytes,
//   and nothing else fires. A socket whose local port is not in the `ports`
//   set (the agent's connected services) returns after a field load and a
//   bit test, so other processes' socket calls pay a few ns and their other
//   syscalls nothing. The server side of a followed port's TCP connection
//   is followed from its first read or write: one established while its
//   port was followed (inet_sock_set_state SYN_RECV -> ESTABLISHED makes
//   its state), or one found open then (connections open before `coral
//   connect` or before the agent started). A connection's state lives in
//   its socket's local storage (`conns`, freed with the socket), so a
//   connection handed to another process (a pre-fork server's child) stays
//   one. Each successful read or write sends one event with the byte count
//   and the first CAP bytes (across iovecs; the syscall's arguments are
//   read from the caller's saved user registers); userspace parses and
//   pairs them. On an HTTP/2 connection (its first read is the client
//   preface) the frames of every read and write are walked, and what lies
//   beyond the first CAP bytes except DATA payloads (frame headers, header
//   blocks) goes in further records of the same syscall: no header block is
//   missed behind a large DATA frame, and no DATA payload is copied. The
//   server's side closing (FIN_WAIT1, LAST_ACK or CLOSE) ends the
//   connection.
// * Connection map: the BTF tracepoint inet_sock_set_state. A socket that
//   enters SYN_SENT (inside connect(), so in the caller's process context)
//   is remembered with its process; its ESTABLISHED / CLOSE transitions
//   become edge events with bytes and smoothed RTT read from struct
//   tcp_sock (CO-RE). No program needs tracefs.
//
// Events go to one BPF ring buffer per CPU (an ARRAY_OF_MAPS filled by the
// loader, sized by config). The agent reads them on its own schedule and is
// woken only when a record fills a ring past a quarter, a half or three
// quarters (once per crossing). A full ring drops the event and
// counts it; the traced app never waits.
//
// Verifier notes: no loops except bounded ones, every user read has a
// constant upper bound (CAP), map values are checked for NULL.

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define MAX_CPUS 128
#define CAP 4096     /* bytes captured per read (pipelined requests fit); a power of two */
#define CAP_OUT 4096 /* bytes captured per write: response heads, HTTP/2 frame headers */
#define MAX_IOV 128  /* iovecs of a readv/writev/recvmsg/sendmsg captured */
#define MAX_CONNS 65536
#define WALK_STEPS 65536 /* steps of the HTTP/2 frame walk per syscall (a step: a frame, a range or an iovec) */
#define WALK_IOVS 1024 /* iovecs the walk follows (UIO_MAXIOV) */

#define EV_DATA 1
#define EV_ACCEPT 2
#define EV_CLOSE 3
#define EV_EDGE_OPEN 4
#define EV_EDGE_FAIL 5
#define EV_EDGE_CLOSE 6

#define DIR_IN 0
#define DIR_OUT 1

#define ARG_BUF 0
#define ARG_IOV 1
#define ARG_MSG 2

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define PF_IO_WORKER 0x00000010
#define PF_KTHREAD 0x00200000
#define MSG_PEEK 2
#define MSG_ERRQUEUE 0x2000

/* conn.proto: decided at the connection's first read */
#define PROTO_UNKNOWN 0
#define PROTO_H2 1 /* began with the HTTP/2 client preface */
#define PROTO_OTHER 2

/* conn_event.flags */
#define CONN_EXISTING 1 /* open before it was followed: found at a read or write */

/* Stats slots (per CPU, summed by the agent). */
#define ST_EVENTS 0
#define ST_DROPS 1
#define ST_NO_RING 2
#define ST_CONNS_FULL 3
#define ST_MAX 8

/* Set by the loader: the agent's own process, never traced. */
const volatile __u32 coral_self_tgid = 0;

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
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* Listening ports to follow (the agent's connected services), one bit
 * each. */
struct port_set {
	__u64 bits[1024];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct port_set);
} ports SEC(".maps");

/* Where an HTTP/2 connection's frames are, one direction: what of the
 * frame the last syscall ended inside is still to come. */
struct h2_dir {
	__u32 skip; /* payload bytes of that frame */
	__u8 send; /* they are sent (the frame is not DATA) */
	__u8 part_n; /* or: the last syscall ended inside a frame header, after this many bytes */
	__u8 lost; /* the walk lost the frames: no more records beyond CAP */
	__u8 _pad;
	__u8 part[8];
};

/* A followed (server-side) TCP connection, in its socket's local storage:
 * made when it is established while its port is followed, or when it is
 * found open at a read or write. Its first read or write names it to the
 * agent (the process and fd, which with start_ns are its identity in the
 * events); the server's side closing removes it, and the kernel frees it
 * with the socket in any case. */
struct conn {
	__u64 start_ns; /* established (or found) time */
	__u64 named; /* tgid << 32 | fd of its first read or write; 0 before it */
	__u16 lport;
	__u8 proto; /* PROTO_* */
	__u8 _pad[5];
	struct h2_dir h2[2]; /* per direction (DIR_IN, DIR_OUT) */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct conn);
} conns SEC(".maps");

/* A client socket in SYN_SENT or later, keyed by its struct sock address. */
struct owner {
	__u32 tgid;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u64);
	__type(value, struct owner);
} owners SEC(".maps");

/* The wire format read by coral-agent/src/ebpf/event.rs: keep in step. */
struct data_event {
	__u8 kind;
	__u8 dir;
	__u16 lport;
	__u32 tgid;
	__u32 fd;
	__u32 len; /* bytes the syscall moved */
	__u64 conn_start_ns;
	__u64 ts_ns;
	__u32 cap; /* bytes captured below */
	__u32 off; /* where they begin in the syscall's bytes: 0, or a further record's CAP multiple */
	/* CAP bytes at most are sent; twice that so the verifier can bound
	 * a copy of up to CAP bytes at any offset below CAP. */
	__u8 data[2 * CAP];
};

struct conn_event {
	__u8 kind;
	__u8 family;
	__u16 lport;
	__u32 tgid;
	__u32 fd;
	__u16 rport;
	__u16 flags; /* CONN_EXISTING */
	__u64 conn_start_ns;
	__u64 ts_ns;
	__u8 raddr[16];
	char comm[16];
};

struct edge_event {
	__u8 kind;
	__u8 family;
	__u16 sport;
	__u16 dport;
	__u16 _pad;
	__u32 tgid;
	__u32 srtt_us;
	__u64 ts_ns;
	__u64 bytes_acked;
	__u64 bytes_received;
	__u8 saddr[16];
	__u8 daddr[16];
	char comm[16];
};

/* The offsets coral-agent/src/ebpf/event.rs reads. */
_Static_assert(__builtin_offsetof(struct data_event, data) == 40, "data_event layout");
_Static_assert(__builtin_offsetof(struct data_event, off) == 36, "data_event layout");
_Static_assert(CAP_OUT == CAP, "capture sizes (the plain-buffer copy bounds both by CAP)");
_Static_assert(sizeof(struct conn_event) == 64, "conn_event layout");
_Static_assert(__builtin_offsetof(struct conn_event, raddr) == 32, "conn_event layout");
_Static_assert(sizeof(struct edge_event) == 88, "edge_event layout");
_Static_assert(__builtin_offsetof(struct edge_event, saddr) == 40, "edge_event layout");

/* Scratch space for building a data event (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct data_event);
} scratch SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);
	if (v)
		*v += 1;
}

static __always_inline int emit(void *data, __u64 size)
{
	__u32 cpu = bpf_get_smp_processor_id();
	void *ring = bpf_map_lookup_elem(&rings, &cpu);
	if (!ring) {
		count(ST_NO_RING);
		return -1;
	}
	/* Wake the agent only when this record fills the ring past a
	 * quarter, a half or three quarters: below that it reads on its own
	 * schedule, and the traced app pays no wakeup. Only at the crossings,
	 * not for every record past them: a wakeup per record costs the traced
	 * syscall a few microseconds, and a reader that is behind needs one
	 * wakeup, not thousands. (Three crossings, so one missed when another
	 * program on this CPU wrote between the query and the write is made
	 * up by the next.) */
	__u64 flags = BPF_RB_NO_WAKEUP;
	__u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	__u64 quarter = bpf_ringbuf_query(ring, BPF_RB_RING_SIZE) / 4;
	if (quarter && avail / quarter != (avail + size + 8) / quarter)
		flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(ring, data, size, flags)) {
		count(ST_DROPS);
		return -1;
	}
	count(ST_EVENTS);
	return 0;
}

static __always_inline int traced(__u64 pid_tgid)
{
	return (__u32)(pid_tgid >> 32) != coral_self_tgid;
}

static __always_inline struct port_set *port_set(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&ports, &zero);
}

static __always_inline int port_in(struct port_set *p, __u16 port)
{
	return (p->bits[(port >> 6) & 1023] >> (port & 63)) & 1;
}

/* ---- the HTTP/2 frame walk ---- */

#define H2_DATA 0
#define PH_NEXT 0 /* at a frame header (w->next) */
#define PH_HDR 1 /* reading a frame header: [pos, end) into hdr */
#define PH_PAYLOAD 2 /* a payload to send: [pos, end) */
#define PH_DONE 3

/* The walk through one syscall's bytes. In a map, not on the stack: the
 * verifier does not track a map value's contents, so it verifies the step
 * callback once. */
struct walk {
	__u64 src; /* ARG_BUF: the buffer; ARG_IOV: the iovec array */
	__u64 iovcnt;
	__u64 iov_base; /* ARG_IOV: the current iovec's base */
	__u32 kind;
	__u32 idx; /* ARG_IOV: the current iovec */
	__u32 base; /* where it begins in the syscall's bytes */
	__u32 iov_len; /* its length */
	__u32 iov_loaded;
	__u32 len; /* bytes the syscall moved */
	__u32 pos; /* next byte to look at */
	__u32 end; /* end of the current range */
	__u32 next; /* where the next frame header begins (may be past len) */
	__u32 phase;
	__u32 hdr_got; /* bytes of the frame header in hdr */
	__u32 send; /* the last frame's payload is sent (not DATA) */
	__u32 rec_got; /* bytes in the record being filled (scratch) */
	__u32 failed;
	__u32 cap0; /* bytes in the first record (scratch, until a further record is filled):
		     * CAP, or fewer if the syscall moved fewer or had more than MAX_IOV iovecs */
	__u8 hdr[32]; /* 9 used; room for the verifier's bounds */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct walk);
} walks SEC(".maps");

/* Sends the record being filled (scratch: a data_event whose header the
 * first record set). */
static __always_inline int flush_record(struct walk *w, struct data_event *e)
{
	__u32 n = w->rec_got;
	w->rec_got = 0;
	if (n > CAP)
		n = CAP;
	barrier_var(n);
	n &= 2 * CAP - 1; /* changes nothing; bounds the size for the verifier */
	e->cap = n;
	return emit(e, offsetof(struct data_event, data) + n);
}

/* bpf_loop callback: one step of the walk. */
static long walk_step(__u64 i, void *data)
{
	__u32 zero = 0;
	struct walk *w = bpf_map_lookup_elem(&walks, &zero);
	struct data_event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!w || !e || w->failed)
		return 1;
	if (w->phase == PH_NEXT) {
		if (w->next >= w->len) {
			w->phase = PH_DONE;
			return 1;
		}
		if (w->next + 9 <= w->cap0) {
			/* A frame header in the first record's bytes (still in
			 * scratch: further records are filled only past it):
			 * one step, no user read. */
			__u32 at = w->next;
			barrier_var(at);
			at &= CAP - 1; /* at < cap0 <= CAP: changes nothing; bounds it */
			const __u8 *h = &e->data[at];
			__u32 flen = (__u32)h[0] << 16 | (__u32)h[1] << 8 | h[2];
			__u32 payload = w->next + 9;
			w->next = payload + flen;
			w->send = h[3] != H2_DATA && flen > 0;
			/* A payload to send that goes past the first record. */
			if (w->send && w->next > w->cap0) {
				w->phase = PH_PAYLOAD;
				w->pos = payload;
				w->end = w->next < w->len ? w->next : w->len;
			}
			return 0;
		}
		w->phase = PH_HDR;
		w->pos = w->next;
		w->end = w->len - w->next > 9 ? w->next + 9 : w->len;
		w->hdr_got = 0;
		return 0;
	}
	if (w->phase != PH_HDR && w->phase != PH_PAYLOAD)
		return 1;
	if (w->pos >= w->end) {
		if (w->phase == PH_PAYLOAD) {
			w->phase = PH_NEXT;
			return 0;
		}
		if (w->hdr_got < 9) {
			/* The syscall ended inside this frame header. */
			w->phase = PH_DONE;
			return 1;
		}
		__u32 flen = (__u32)w->hdr[0] << 16 | (__u32)w->hdr[1] << 8 | w->hdr[2];
		w->next = w->pos + flen;
		w->send = w->hdr[3] != H2_DATA && flen > 0;
		if (w->send) {
			w->phase = PH_PAYLOAD;
			w->end = w->next < w->len ? w->next : w->len;
		} else {
			w->phase = PH_NEXT;
		}
		return 0;
	}
	__u32 pos = w->pos;
	__u32 k = w->end - pos;
	__u32 cap0 = w->cap0;
	if (pos < cap0) {
		/* The first record has these bytes: a payload's are skipped,
		 * a header's read (not past cap0, so the parts before and
		 * after are handled apart). */
		if (w->phase == PH_PAYLOAD) {
			w->pos = w->end < cap0 ? w->end : cap0;
			return 0;
		}
		if (k > cap0 - pos)
			k = cap0 - pos;
	}
	__u64 at;
	if (w->kind == ARG_BUF) {
		at = w->src + pos;
	} else {
		if (!w->iov_loaded || pos >= w->base + w->iov_len) {
			if (w->iov_loaded) {
				w->base += w->iov_len;
				w->idx++;
			}
			if (w->idx >= w->iovcnt || w->idx >= WALK_IOVS) {
				w->failed = 1;
				return 1;
			}
			struct iovec v = {};
			if (bpf_probe_read_user(&v, sizeof(v), (void *)(w->src + w->idx * sizeof(struct iovec)))) {
				w->failed = 1;
				return 1;
			}
			w->iov_base = (__u64)v.iov_base;
			w->iov_len = v.iov_len;
			w->iov_loaded = 1;
			return 0;
		}
		at = w->iov_base + (pos - w->base);
		if (k > w->base + w->iov_len - pos)
			k = w->base + w->iov_len - pos;
	}
	if (pos >= cap0) {
		/* Beyond the first record: into the record being filled, a
		 * new one if these bytes do not follow its last or it is full. */
		if (w->rec_got > 0 && (e->off + w->rec_got != pos || w->rec_got >= CAP)) {
			if (flush_record(w, e)) {
				w->failed = 1;
				return 1;
			}
		}
		if (w->rec_got == 0)
			e->off = pos;
		if (k > CAP - w->rec_got)
			k = CAP - w->rec_got;
	}
	if (w->phase == PH_HDR) {
		__u32 h = w->hdr_got;
		if (h >= 9)
			return 1;
		if (k > 9 - h)
			k = 9 - h;
		barrier_var(h);
		h &= 15;
		__u32 kh = k;
		barrier_var(kh);
		kh &= 15;
		if (bpf_probe_read_user(&w->hdr[h], kh, (void *)at)) {
			w->failed = 1;
			return 1;
		}
		w->hdr_got = h + kh;
	}
	if (pos >= cap0) {
		__u32 r = w->rec_got;
		barrier_var(r);
		r &= CAP - 1; /* r < CAP: changes nothing; bounds it for the verifier */
		__u64 n = k;
		barrier_var(n);
		if (n > CAP)
			n = CAP;
		if (bpf_probe_read_user(&e->data[r], n, (void *)at)) {
			w->failed = 1;
			return 1;
		}
		w->rec_got = r + n;
	}
	w->pos = pos + k;
	return 0;
}

/* Walks the frames of one read or write of an HTTP/2 connection from where
 * the last one left them (`start`: where the first frame begins when there
 * is no last one, after the client preface), sends what lies beyond the
 * first record except DATA payloads, and keeps where the next one begins. */
static __always_inline void h2_walk(struct conn *c, __u8 dir, __u32 kind, __u64 src, __u64 iovcnt, long ret,
				    struct data_event *e, __u32 start)
{
	__u32 zero = 0;
	struct walk *w = bpf_map_lookup_elem(&walks, &zero);
	if (!w)
		return;
	struct h2_dir *d = &c->h2[dir & 1];
	if (d->lost)
		return;
	w->src = src;
	w->iovcnt = iovcnt;
	w->kind = kind;
	w->idx = 0;
	w->base = 0;
	w->iov_len = 0;
	w->iov_loaded = 0;
	w->len = ret;
	w->rec_got = 0;
	w->failed = 0;
	w->send = 0;
	w->hdr_got = 0;
	w->pos = 0;
	w->next = start;
	w->phase = PH_NEXT;
	w->cap0 = e->cap;
	if (d->part_n > 0 && d->part_n < 9) {
		__builtin_memcpy(w->hdr, d->part, 8);
		w->hdr_got = d->part_n;
		w->phase = PH_HDR;
		w->end = ret > 9 - d->part_n ? 9 - d->part_n : ret;
	} else if (d->skip > 0) {
		w->next = d->skip;
		if (d->send) {
			w->phase = PH_PAYLOAD;
			w->end = d->skip < ret ? d->skip : ret;
		}
	}
	bpf_loop(WALK_STEPS, walk_step, NULL, 0);
	if (w->rec_got > 0 && flush_record(w, e))
		w->failed = 1;
	if (w->failed || w->phase != PH_DONE) {
		d->lost = 1;
		return;
	}
	if (w->hdr_got > 0 && w->hdr_got < 9 && w->pos >= w->len && w->pos == w->end) {
		d->part_n = w->hdr_got;
		__builtin_memcpy(d->part, w->hdr, 8);
		d->skip = 0;
	} else {
		d->part_n = 0;
		d->skip = w->next > w->len ? w->next - w->len : 0;
		d->send = w->send;
	}
}

/* ---- socket reads and writes ----
 *
 * The tracepoints give the socket and the byte count; where the bytes are
 * (a buffer, an iovec array, a msghdr) is in the caller's syscall
 * arguments, in its saved user registers (only the return register changes
 * before the syscall returns). A read or write that is not one of the
 * syscalls below (sendfile, splice, io_uring, recvmmsg) is not captured.
 */

#if defined(__TARGET_ARCH_x86)
#define NR_read 0
#define NR_write 1
#define NR_readv 19
#define NR_writev 20
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#elif defined(__TARGET_ARCH_arm64)
#define NR_read 63
#define NR_write 64
#define NR_readv 65
#define NR_writev 66
#define NR_sendto 206
#define NR_recvfrom 207
#define NR_sendmsg 211
#define NR_recvmsg 212
#else
#error "syscall numbers for this architecture"
#endif

/* Names a connection to the agent at its first read or write: the process
 * and fd it is known by from now on. `flags`: CONN_EXISTING when it was
 * found open rather than established while followed. */
static __always_inline void announce(struct conn *c, struct sock *sk, __u32 tgid, __u32 fd, __u16 flags)
{
	struct conn_event e = {};
	__u16 family = sk->__sk_common.skc_family;
	e.kind = EV_ACCEPT;
	e.family = family;
	e.lport = c->lport;
	e.flags = flags;
	e.tgid = tgid;
	e.fd = fd;
	e.rport = bpf_ntohs(sk->__sk_common.skc_dport);
	e.conn_start_ns = c->start_ns;
	e.ts_ns = bpf_ktime_get_ns();
	if (family == AF_INET)
		BPF_CORE_READ_INTO(&e.raddr, sk, __sk_common.skc_daddr);
	else
		BPF_CORE_READ_INTO(&e.raddr, sk, __sk_common.skc_v6_daddr);
	bpf_get_current_comm(&e.comm, sizeof(e.comm));
	emit(&e, sizeof(e));
}

/* A read or write on a followed port's socket with no entry: a connection
 * open before its port was followed (or before the programs were
 * attached), picked up now; NULL for a socket that is not a server-side
 * connection still open both ways. */
static __always_inline struct conn *adopt(struct sock *sk, __u32 tgid, __u32 fd, __u16 lport)
{
	__u16 family = sk->__sk_common.skc_family;
	int state = sk->__sk_common.skc_state;
	if ((family != AF_INET && family != AF_INET6) || (state != TCP_ESTABLISHED && state != TCP_CLOSE_WAIT))
		return NULL;
	struct conn c = {};
	c.start_ns = bpf_ktime_get_ns();
	c.lport = lport;
	struct conn *n = bpf_sk_storage_get(&conns, sk, &c, BPF_SK_STORAGE_GET_F_CREATE);
	if (!n) {
		count(ST_CONNS_FULL);
		return NULL;
	}
	if (n->start_ns == c.start_ns) {
		n->named = (__u64)tgid << 32 | fd;
		announce(n, sk, tgid, fd, CONN_EXISTING);
	}
	return n;
}

/* Where a capture is in a syscall's bytes: a plain buffer (ARG_BUF) or
 * the iovecs in order (ARG_IOV; HTTP/2 stacks write a frame header and its
 * payload as separate iovecs), and the record being filled. */
struct cursor {
	__u64 src; /* the buffer, or the iovec array */
	__u64 iovcnt;
	__u64 in; /* ARG_BUF: bytes consumed; ARG_IOV: of the current iovec */
	__u64 left; /* bytes the syscall moved not yet consumed */
	__u32 kind;
	__u32 idx; /* the current iovec */
	__u32 got; /* bytes in the record so far */
	__u32 limit; /* bytes a record holds */
	__u32 pos; /* the record's offset in the syscall's bytes */
	__u32 failed;
};

/* The cursor lives in a map, not on the stack: the verifier does not
 * track a map value's contents, so it verifies the step callback below
 * once instead of once per distinct value of the cursor. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cursor);
} cursors SEC(".maps");

/* bpf_loop callback: copies the next piece (the rest of the current iovec
 * or of the buffer, as much as the record holds) into c->e->data at
 * c->got. A callback rather than an unrolled loop, so the verifier looks at it
 * once. */
static long step(__u64 i, void *data)
{
	__u32 zero = 0;
	struct cursor *c = bpf_map_lookup_elem(&cursors, &zero);
	struct data_event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!c || !e)
		return 1;
	if (c->left == 0 || c->failed || c->got >= c->limit)
		return 1;
	__u64 from, n;
	if (c->kind == ARG_BUF) {
		from = c->src + c->in;
		n = c->left;
	} else {
		if (c->idx >= c->iovcnt)
			return 1;
		struct iovec v = {};
		if (bpf_probe_read_user(&v, sizeof(v), (void *)(c->src + c->idx * sizeof(struct iovec)))) {
			c->failed = 1;
			return 1;
		}
		if (c->in >= v.iov_len) {
			c->idx++;
			c->in = 0;
			return 0;
		}
		from = (__u64)v.iov_base + c->in;
		n = v.iov_len - c->in;
		if (n > c->left)
			n = c->left;
	}
	__u32 got = c->got;
	if (n > c->limit - got)
		n = c->limit - got;
	barrier_var(n);
	if (n > CAP)
		n = CAP;
	/* got < limit <= CAP: the mask changes nothing but shows the
	 * verifier the bound (the barrier keeps clang from dropping it). */
	__u32 at = got;
	barrier_var(at);
	at &= CAP - 1;
	if (bpf_probe_read_user(&e->data[at], n, (void *)from)) {
		c->failed = 1;
		return 1;
	}
	c->got = got + n;
	c->in += n;
	c->left -= n;
	return 0;
}

/* Whether a capture begins with the HTTP/2 client preface's first line. */
static __always_inline int preface(const __u8 *d)
{
	/* "PRI * HTTP/2.0\r\n" */
	const char p[16] = "PRI * HTTP/2.0\r\n";
	for (int i = 0; i < 16; i++)
		if (d[i] != (__u8)p[i])
			return 0;
	return 1;
}

/* The saved user registers: the syscall's number and first arguments. */
#if defined(__TARGET_ARCH_x86)
#define SYSCALL_NR(regs) ((regs)->orig_ax)
#define SYSCALL_ARG1(regs) ((regs)->di)
#define SYSCALL_ARG2(regs) ((regs)->si)
#define SYSCALL_ARG3(regs) ((regs)->dx)
#elif defined(__TARGET_ARCH_arm64)
#define SYSCALL_NR(regs) ((regs)->syscallno)
#define SYSCALL_ARG1(regs) ((regs)->orig_x0)
#define SYSCALL_ARG2(regs) ((regs)->regs[1])
#define SYSCALL_ARG3(regs) ((regs)->regs[2])
#endif

/* How the syscall behind a socket read (dir DIR_IN) or write passes its
 * bytes (ARG_*), or -1 if it is none of ours. */
static __always_inline int arg_kind(long nr, __u8 dir)
{
	if (dir == DIR_IN) {
		switch (nr) {
		case NR_read:
		case NR_recvfrom:
			return ARG_BUF;
		case NR_readv:
			return ARG_IOV;
		case NR_recvmsg:
			return ARG_MSG;
		}
		return -1;
	}
	switch (nr) {
	case NR_write:
	case NR_sendto:
		return ARG_BUF;
	case NR_writev:
		return ARG_IOV;
	case NR_sendmsg:
		return ARG_MSG;
	}
	return -1;
}

/* One read or write of `ret` bytes on socket `sk`. */
static __always_inline int on_data(struct sock *sk, long ret, __u8 dir)
{
	/* A read or write that moved nothing (EAGAIN: a non-blocking
	 * server's read after the last request; end of file) and a socket
	 * that is not on a followed port cost this much. */
	if (ret <= 0)
		return 0;
	struct port_set *p = port_set();
	if (!p)
		return 0;
	__u16 lport = sk->__sk_common.skc_num;
	if (!port_in(p, lport) || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!traced(pid_tgid))
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	if (task->flags & (PF_KTHREAD | PF_IO_WORKER))
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return 0;
	int kind = arg_kind(SYSCALL_NR(regs), dir);
	if (kind < 0)
		return 0;
	__u32 tgid = pid_tgid >> 32;
	__u32 fd = (__u32)SYSCALL_ARG1(regs);
	struct conn *c = bpf_sk_storage_get(&conns, sk, 0, 0);
	if (!c)
		c = adopt(sk, tgid, fd, lport);
	else if (c->named == 0 && __sync_val_compare_and_swap(&c->named, 0, (__u64)tgid << 32 | fd) == 0)
		announce(c, sk, tgid, fd, 0);
	if (!c)
		return 0;
	__u32 zero = 0;
	struct data_event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 0;
	e->kind = EV_DATA;
	e->dir = dir;
	e->lport = c->lport;
	e->tgid = c->named >> 32;
	e->fd = (__u32)c->named;
	e->len = ret;
	e->conn_start_ns = c->start_ns;
	e->ts_ns = bpf_ktime_get_ns();
	e->off = 0;
	struct cursor *cur = bpf_map_lookup_elem(&cursors, &zero);
	if (!cur)
		return 0;
	cur->kind = kind;
	cur->src = SYSCALL_ARG2(regs);
	cur->iovcnt = SYSCALL_ARG3(regs);
	cur->in = 0;
	cur->left = ret;
	cur->idx = 0;
	cur->got = 0;
	cur->limit = dir == DIR_IN ? CAP : CAP_OUT;
	cur->pos = 0;
	cur->failed = 0;
	if (kind == ARG_MSG) {
		struct user_msghdr msg = {};
		if (!bpf_probe_read_user(&msg, sizeof(msg), (void *)cur->src)) {
			cur->src = (__u64)msg.msg_iov;
			cur->iovcnt = msg.msg_iovlen;
		} else {
			cur->failed = 1;
		}
		cur->kind = ARG_IOV;
	}
	if (cur->kind == ARG_BUF) {
		/* The common case (read, write, recvfrom, sendto): one copy,
		 * no callback. */
		__u64 n = (__u64)ret;
		barrier_var(n);
		if (n > CAP) /* CAP_OUT == CAP */
			n = CAP;
		if (bpf_probe_read_user(e->data, n, (void *)cur->src))
			cur->failed = 1;
		else
			cur->got = n;
	} else {
		bpf_loop(MAX_IOV, step, NULL, 0);
	}
	__u32 off = cur->got;
	if (off > CAP)
		off = CAP;
	/* The mask changes nothing (off <= CAP) but bounds the size for the
	 * verifier on every path. */
	barrier_var(off);
	off &= 2 * CAP - 1;
	int started = 0;
	if (c->proto == PROTO_UNKNOWN && dir == DIR_IN) {
		started = off >= 24 && preface(e->data);
		c->proto = started ? PROTO_H2 : PROTO_OTHER;
	}
	e->cap = off;
	emit(e, offsetof(struct data_event, data) + off);
	/* HTTP/2: the frames are walked in every read and write (their
	 * 9-byte headers, and the payload lengths skipped), so the frame
	 * headers and the non-DATA payloads (header blocks: HEADERS,
	 * CONTINUATION, RST_STREAM, SETTINGS...) beyond the first CAP bytes
	 * are sent in further records, DATA payloads never. A large read or
	 * write (a big message's DATA frames with other streams' HEADERS and
	 * trailers behind them) then loses no header block, and the
	 * connection's HPACK tables stay whole. The server may write its
	 * SETTINGS before it reads the preface: writes are walked from the
	 * connection's start until its first read says it is not HTTP/2. */
	if (!cur->failed && (c->proto == PROTO_H2 || (c->proto == PROTO_UNKNOWN && dir == DIR_OUT)))
		h2_walk(c, dir, kind == ARG_BUF ? ARG_BUF : ARG_IOV, cur->src, cur->iovcnt, ret, e, started ? 24 : 0);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(sock_recv, struct sock *sk, int ret, int flags)
{
	/* A peek leaves the bytes to the next read. */
	if (flags & (MSG_PEEK | MSG_ERRQUEUE))
		return 0;
	return on_data(sk, ret, DIR_IN);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(sock_send, struct sock *sk, int ret, int flags)
{
	return on_data(sk, ret, DIR_OUT);
}

/* ---- connection map ---- */

/* The server's side of a followed connection closed (close() or shutdown
 * on it, or the connection reset): no more requests on it. */
static __always_inline void conn_closed(struct sock *sk)
{
	struct conn *c = bpf_sk_storage_get(&conns, sk, 0, 0);
	if (!c)
		return;
	if (c->named) {
		struct conn_event e = {};
		e.kind = EV_CLOSE;
		e.lport = c->lport;
		e.tgid = c->named >> 32;
		e.fd = (__u32)c->named;
		e.conn_start_ns = c->start_ns;
		e.ts_ns = bpf_ktime_get_ns();
		emit(&e, sizeof(e));
	}
	bpf_sk_storage_delete(&conns, sk);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(set_state, struct sock *sk, int oldstate, int newstate)
{
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	__u64 key = (__u64)sk;
	if (newstate == TCP_SYN_SENT) {
		/* Inside connect(): the current task is the client. */
		__u64 pid_tgid = bpf_get_current_pid_tgid();
		if (!traced(pid_tgid))
			return 0;
		struct owner o = {};
		o.tgid = pid_tgid >> 32;
		bpf_get_current_comm(&o.comm, sizeof(o.comm));
		if (bpf_map_update_elem(&owners, &key, &o, BPF_ANY))
			count(ST_CONNS_FULL);
		return 0;
	}
	__u16 sport = sk->__sk_common.skc_num;
	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		/* A server-side connection established (in softirq: no
		 * process yet); its first read or write names it. */
		struct port_set *p = port_set();
		if (p && port_in(p, sport)) {
			struct conn c = {};
			c.start_ns = bpf_ktime_get_ns();
			c.lport = sport;
			if (!bpf_sk_storage_get(&conns, sk, &c, BPF_SK_STORAGE_GET_F_CREATE))
				count(ST_CONNS_FULL);
		}
		return 0;
	}
	if (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK || newstate == TCP_CLOSE)
		conn_closed(sk);
	__u8 kind;
	if (oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED)
		kind = EV_EDGE_OPEN;
	else if (oldstate == TCP_SYN_SENT && newstate == TCP_CLOSE)
		kind = EV_EDGE_FAIL;
	else if (newstate == TCP_CLOSE)
		kind = EV_EDGE_CLOSE;
	else
		return 0;
	struct owner *o = bpf_map_lookup_elem(&owners, &key);
	if (!o)
		return 0;
	struct edge_event e = {};
	__u16 family = sk->__sk_common.skc_family;
	e.kind = kind;
	e.family = family;
	e.sport = sport;
	e.dport = bpf_ntohs(sk->__sk_common.skc_dport);
	e.tgid = o->tgid;
	__builtin_memcpy(e.comm, o->comm, sizeof(e.comm));
	e.ts_ns = bpf_ktime_get_ns();
	if (family == AF_INET) {
		BPF_CORE_READ_INTO(&e.saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO(&e.daddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&e.saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&e.daddr, sk, __sk_common.skc_v6_daddr);
	}
	if (kind == EV_EDGE_CLOSE) {
		struct tcp_sock *tp = (struct tcp_sock *)sk;
		e.srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
		e.bytes_acked = BPF_CORE_READ(tp, bytes_acked);
		e.bytes_received = BPF_CORE_READ(tp, bytes_received);
	}
	if (kind != EV_EDGE_OPEN)
		bpf_map_delete_elem(&owners, &key);
	emit(&e, sizeof(e));
	return 0;
}
