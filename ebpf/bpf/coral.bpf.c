// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
//
// Coral's RED + connection-map programs.
//
// * Request capture (HTTP/1.x, HTTP/2, gRPC, PostgreSQL, Redis are parsed
//   in userspace): the BTF raw tracepoint sys_exit (tp_btf), filtered to
//   accept, read, recvfrom, readv, recvmsg, write, sendto, writev, sendmsg
//   and close, follows the server side of every TCP connection whose local
//   port is in the `ports` set (the agent's connected services): accepted
//   while followed, or found open at its first read or write (connections
//   open before `coral connect` or before the agent started). Only
//   processes that hold such a socket are looked at (`procs`, decided once
//   per process and port-set generation). Each successful read/write-like
//   syscall on a followed socket sends one event with the byte count and
//   the first CAP bytes (across iovecs); userspace parses and pairs them.
//   On an HTTP/2 connection (its first read is the client preface) the
//   frames of every read and write are walked, and what lies beyond the
//   first CAP bytes except DATA payloads (frame headers, header blocks)
//   goes in further records of the same syscall: no header block is missed
//   behind a large DATA frame, and no DATA payload is copied.
// * Connection map: sock:inet_sock_set_state. A socket that enters SYN_SENT
//   (inside connect(), so in the caller's process context) is remembered with
//   its process; its ESTABLISHED / CLOSE transitions become edge events with
//   bytes and smoothed RTT read from struct tcp_sock (CO-RE).
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
#define PROC_SLOTS 65536 /* per-process filter slots; a power of two */
#define SCAN_MAX_FDS 65536 /* fds looked at when a process is first seen */
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
#define ARG_CLOSE 3

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define EINPROGRESS 115
#define TCP_LISTEN_STATE 10

/* conn.proto: decided at the connection's first read (accepted ones only) */
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
 * each, and a generation the agent bumps after every change (written in a
 * second update, so a program that sees the new generation sees the new
 * bits). */
struct port_set {
	__u64 bits[1024];
	__u64 gen;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct port_set);
} ports SEC(".maps");

/* Per-process filter, one slot per tgid (modulo PROC_SLOTS): whether the
 * process holds a TCP socket (listening or accepted) on a followed port,
 * decided once per process and port-set generation by looking at its fd
 * table. A syscall of a process that holds none returns after this
 * lookup and two compares. */
struct proc_state {
	__u32 tgid;
	__u32 gen;
	__u32 follow;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PROC_SLOTS);
	__type(key, __u32);
	__type(value, struct proc_state);
} procs SEC(".maps");

/* A followed (server-side) TCP connection, keyed by tgid << 32 | fd:
 * accepted while followed, or found open at its first read or write.
 * LRU: entries of processes that exit without close() age out. */
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

struct conn {
	__u64 start_ns; /* accept (or discovery) time: with tgid and fd, the connection's identity */
	__u16 lport;
	__u8 proto; /* PROTO_* */
	__u8 _pad[5];
	struct h2_dir h2[2]; /* per direction (DIR_IN, DIR_OUT) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u64);
	__type(value, struct conn);
} conns SEC(".maps");

/* fds of following processes known not to be followed connections (files,
 * pipes, client sockets), keyed like conns, with the port-set generation
 * they were checked under: their reads and writes skip the fd-table walk.
 * close() removes an entry (the number may come back as a connection). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u64);
	__type(value, __u32);
} notconn SEC(".maps");

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

/* The struct sock behind a file, or NULL if it is not a socket. */
static __always_inline struct sock *sock_of_file(struct file *file)
{
	if (!file)
		return NULL;
	umode_t mode = BPF_CORE_READ(file, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return NULL;
	return BPF_CORE_READ(sock, sk);
}

/* The current task's fd table: its array and size. */
static __always_inline struct file **fd_array(__u32 *max)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct files_struct *files = BPF_CORE_READ(task, files);
	if (!files)
		return NULL;
	struct fdtable *fdt = BPF_CORE_READ(files, fdt);
	if (!fdt)
		return NULL;
	*max = BPF_CORE_READ(fdt, max_fds);
	return BPF_CORE_READ(fdt, fd);
}

/* The struct sock behind fd in the current task, or NULL. */
static __always_inline struct sock *sock_of_fd(__u32 fd)
{
	__u32 max = 0;
	struct file **fds = fd_array(&max);
	if (!fds || fd >= max)
		return NULL;
	struct file *file = NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return sock_of_file(file);
}

/* An IPv4/IPv6 TCP socket whose local port is followed: a followed
 * service's listener or one of its server-side connections (a client
 * socket's local port is an ephemeral one, never a listening port). */
static __always_inline int followed_tcp(struct sock *sk, struct port_set *p, __u16 *lport, __u16 *family)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u16 fam = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (fam != AF_INET && fam != AF_INET6)
		return 0;
	__u16 port = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (!port_in(p, port))
		return 0;
	*lport = port;
	*family = fam;
	return 1;
}

struct scan_ctx {
	struct file **fds;
	__u32 max;
	__u32 found;
};

static long scan_fd(__u64 i, void *data)
{
	struct scan_ctx *c = data;
	if (i >= c->max)
		return 1;
	struct file *file = NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &c->fds[i]);
	struct sock *sk = sock_of_file(file);
	if (!sk)
		return 0;
	struct port_set *p = port_set();
	__u16 lport, family;
	if (p && followed_tcp(sk, p, &lport, &family)) {
		c->found = 1;
		return 1;
	}
	return 0;
}

static __always_inline struct proc_state *proc_slot(__u32 tgid)
{
	__u32 k = tgid & (PROC_SLOTS - 1);
	return bpf_map_lookup_elem(&procs, &k);
}

static __always_inline void set_proc(struct proc_state *s, __u32 tgid, __u32 gen, __u32 follow)
{
	s->tgid = tgid;
	s->gen = gen;
	s->follow = follow;
}

/* Whether the current process holds a socket on a followed port: read
 * from its slot, or decided now (once per process and port-set
 * generation) by walking its fd table until one is found. */
static __always_inline int proc_follows(__u64 pid_tgid)
{
	__u32 tgid = pid_tgid >> 32;
	struct proc_state *s = proc_slot(tgid);
	if (!s)
		return 0;
	struct port_set *p = port_set();
	if (!p)
		return 0;
	__u32 gen = (__u32)p->gen;
	if (s->tgid == tgid && s->gen == gen)
		return s->follow;
	struct scan_ctx c = {};
	if (gen != 0 && tgid != coral_self_tgid)
		c.fds = fd_array(&c.max);
	if (c.fds) {
		__u32 n = c.max < SCAN_MAX_FDS ? c.max : SCAN_MAX_FDS;
		bpf_loop(n, scan_fd, &c, 0);
	}
	set_proc(s, tgid, gen, c.found);
	return c.found;
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

/* ---- syscalls: the BTF raw tracepoint sys_exit ----
 *
 * One raw tracepoint at syscall exit instead of an enter/exit tracepoint
 * pair per syscall of interest (those cost a perf buffer, an argument copy
 * and a map entry saving the arguments per hit, and a perf syscall
 * tracepoint adds a probe to every syscall's exit): every syscall of every
 * process passes through it. A syscall that is not accept, close or a
 * read/write-like call returns after one load and a compare; one of those
 * in a process with no followed connection after one more array lookup.
 */

#if defined(__TARGET_ARCH_x86)
#define NR_read 0
#define NR_write 1
#define NR_close 3
#define NR_readv 19
#define NR_accept 43
#define NR_writev 20
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_accept4 288
#elif defined(__TARGET_ARCH_arm64)
#define NR_read 63
#define NR_write 64
#define NR_close 57
#define NR_readv 65
#define NR_accept 202
#define NR_writev 66
#define NR_sendto 206
#define NR_recvfrom 207
#define NR_sendmsg 211
#define NR_recvmsg 212
#define NR_accept4 242
#else
#error "syscall numbers for this architecture"
#endif

/* Follows fd (a socket on a followed port) from now on and tells the
 * agent; `flags` says whether it was just accepted or found open. */
static __always_inline struct conn *follow_conn(__u64 pid_tgid, __u32 fd, struct sock *sk, __u16 lport,
						 __u16 family, __u16 flags)
{
	struct conn c = {};
	c.start_ns = bpf_ktime_get_ns();
	c.lport = lport;
	__u64 key = (pid_tgid & 0xffffffff00000000ULL) | fd;
	if (bpf_map_update_elem(&conns, &key, &c, BPF_ANY)) {
		count(ST_CONNS_FULL);
		return NULL;
	}
	struct conn_event e = {};
	e.kind = EV_ACCEPT;
	e.family = family;
	e.lport = lport;
	e.flags = flags;
	e.tgid = pid_tgid >> 32;
	e.fd = fd;
	e.rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	e.conn_start_ns = c.start_ns;
	e.ts_ns = c.start_ns;
	if (family == AF_INET)
		BPF_CORE_READ_INTO(&e.raddr, sk, __sk_common.skc_daddr);
	else
		BPF_CORE_READ_INTO(&e.raddr, sk, __sk_common.skc_v6_daddr);
	bpf_get_current_comm(&e.comm, sizeof(e.comm));
	emit(&e, sizeof(e));
	return bpf_map_lookup_elem(&conns, &key);
}

static __always_inline void on_accept_exit(__u64 pid_tgid, long ret)
{
	if (ret < 0)
		return;
	__u32 fd = (__u32)ret;
	struct sock *sk = sock_of_fd(fd);
	if (!sk)
		return;
	struct port_set *p = port_set();
	__u16 lport, family;
	if (!p || !followed_tcp(sk, p, &lport, &family))
		return;
	if (!follow_conn(pid_tgid, fd, sk, lport, family, 0))
		return;
	/* The process serves a followed port: its reads and writes are
	 * looked at from now on. */
	__u32 tgid = pid_tgid >> 32;
	struct proc_state *s = proc_slot(tgid);
	if (s)
		set_proc(s, tgid, (__u32)p->gen, 1);
}

/* A read or write on an fd of a following process that is not followed
 * yet: a connection open before its port was followed (or before the
 * programs were attached), picked up now; NULL for any other fd. */
static __always_inline struct conn *adopt(__u64 pid_tgid, __u32 fd)
{
	struct port_set *p = port_set();
	if (!p)
		return NULL;
	__u32 gen = (__u32)p->gen;
	__u64 key = (pid_tgid & 0xffffffff00000000ULL) | fd;
	__u32 *known = bpf_map_lookup_elem(&notconn, &key);
	if (known && *known == gen)
		return NULL;
	struct sock *sk = sock_of_fd(fd);
	__u16 lport, family;
	if (!sk || !followed_tcp(sk, p, &lport, &family) ||
	    BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_LISTEN_STATE) {
		bpf_map_update_elem(&notconn, &key, &gen, BPF_ANY);
		return NULL;
	}
	return follow_conn(pid_tgid, fd, sk, lport, family, CONN_EXISTING);
}

static __always_inline void on_close(__u64 pid_tgid, __u32 fd)
{
	__u64 key = (pid_tgid & 0xffffffff00000000ULL) | fd;
	bpf_map_delete_elem(&notconn, &key);
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (!c)
		return;
	struct conn_event e = {};
	e.kind = EV_CLOSE;
	e.lport = c->lport;
	e.tgid = pid_tgid >> 32;
	e.fd = fd;
	e.conn_start_ns = c->start_ns;
	e.ts_ns = bpf_ktime_get_ns();
	bpf_map_delete_elem(&conns, &key);
	emit(&e, sizeof(e));
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

/* At syscall exit the saved user registers still hold the number and the
 * first arguments (only the return register changed), so data syscalls
 * need no state saved at entry. A BTF tracepoint reads them with plain
 * loads (no helper call), so a syscall that is not ours costs one load and
 * a compare. */
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

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit, struct pt_regs *regs, long ret)
{
	long nr = SYSCALL_NR(regs);
	__u8 kind, dir = DIR_IN;
	switch (nr) {
	case NR_accept:
	case NR_accept4: {
		/* Any process may accept a followed connection. */
		__u64 pid_tgid = bpf_get_current_pid_tgid();
		if (traced(pid_tgid))
			on_accept_exit(pid_tgid, ret);
		return 0;
	}
	case NR_read:
	case NR_recvfrom:
		kind = ARG_BUF;
		break;
	case NR_readv:
		kind = ARG_IOV;
		break;
	case NR_recvmsg:
		kind = ARG_MSG;
		break;
	case NR_write:
	case NR_sendto:
		kind = ARG_BUF;
		dir = DIR_OUT;
		break;
	case NR_writev:
		kind = ARG_IOV;
		dir = DIR_OUT;
		break;
	case NR_sendmsg:
		kind = ARG_MSG;
		dir = DIR_OUT;
		break;
	case NR_close:
		kind = ARG_CLOSE;
		break;
	default:
		return 0;
	}
	/* A failed read or write (EAGAIN: a non-blocking server's read after
	 * the last request) moved nothing: done before the process lookup. */
	if (kind != ARG_CLOSE && ret <= 0)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!proc_follows(pid_tgid))
		return 0;
	if (kind == ARG_CLOSE) {
		if (ret == 0)
			on_close(pid_tgid, (__u32)SYSCALL_ARG1(regs));
		return 0;
	}
	if (ret <= 0)
		return 0;
	__u32 fd = (__u32)SYSCALL_ARG1(regs);
	__u64 key = (pid_tgid & 0xffffffff00000000ULL) | fd;
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (!c)
		c = adopt(pid_tgid, fd);
	if (!c)
		return 0;
	__u32 zero = 0;
	struct data_event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 0;
	e->kind = EV_DATA;
	e->dir = dir;
	e->lport = c->lport;
	e->tgid = pid_tgid >> 32;
	e->fd = fd;
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

/* ---- connection map ---- */

struct set_state_ctx {
	__u64 common;
	const void *skaddr;
	int oldstate;
	int newstate;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 protocol;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

SEC("tracepoint/sock/inet_sock_set_state")
int set_state(struct set_state_ctx *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	__u64 sk = (__u64)ctx->skaddr;
	if (ctx->newstate == TCP_SYN_SENT) {
		/* Inside connect(): the current task is the client. */
		__u64 pid_tgid = bpf_get_current_pid_tgid();
		if (!traced(pid_tgid))
			return 0;
		struct owner o = {};
		o.tgid = pid_tgid >> 32;
		bpf_get_current_comm(&o.comm, sizeof(o.comm));
		if (bpf_map_update_elem(&owners, &sk, &o, BPF_ANY))
			count(ST_CONNS_FULL);
		return 0;
	}
	__u8 kind;
	if (ctx->oldstate == TCP_SYN_SENT && ctx->newstate == TCP_ESTABLISHED)
		kind = EV_EDGE_OPEN;
	else if (ctx->oldstate == TCP_SYN_SENT && ctx->newstate == TCP_CLOSE)
		kind = EV_EDGE_FAIL;
	else if (ctx->newstate == TCP_CLOSE)
		kind = EV_EDGE_CLOSE;
	else
		return 0;
	struct owner *o = bpf_map_lookup_elem(&owners, &sk);
	if (!o)
		return 0;
	struct edge_event e = {};
	e.kind = kind;
	e.family = ctx->family;
	e.sport = ctx->sport;
	e.dport = ctx->dport;
	e.tgid = o->tgid;
	__builtin_memcpy(e.comm, o->comm, sizeof(e.comm));
	e.ts_ns = bpf_ktime_get_ns();
	if (ctx->family == AF_INET) {
		__builtin_memcpy(e.saddr, ctx->saddr, 4);
		__builtin_memcpy(e.daddr, ctx->daddr, 4);
	} else {
		__builtin_memcpy(e.saddr, ctx->saddr_v6, 16);
		__builtin_memcpy(e.daddr, ctx->daddr_v6, 16);
	}
	if (kind == EV_EDGE_CLOSE) {
		struct tcp_sock *tp = (struct tcp_sock *)sk;
		e.srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
		e.bytes_acked = BPF_CORE_READ(tp, bytes_acked);
		e.bytes_received = BPF_CORE_READ(tp, bytes_received);
	}
	if (kind != EV_EDGE_OPEN)
		bpf_map_delete_elem(&owners, &sk);
	emit(&e, sizeof(e));
	return 0;
}
